"""The network: a keras.applications backbone by name, cut and split into a frozen and a
trainable part, a new head, and the saved model that takes raw pixels."""
