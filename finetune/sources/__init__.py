"""Where the inputs come from: the competition's files from Kaggle or a local copy, any
folder of class folders, and the backbone's pretrained weights from mirrors."""
