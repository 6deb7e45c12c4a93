"""The frozen part's activations, computed once per image and cached (the features
stage): the file format and index, the extraction loop, and its Dask runner."""
