"""The labelled images: reading archives safely, finding the classes, checking and
unpacking the images, the manifest, decoding, the train/validation split and the
competition's test set."""
