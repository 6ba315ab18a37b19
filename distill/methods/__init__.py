"""Training methods, one file per family. ``registry.REGISTRY`` maps config names to classes;
``settings`` holds their typed hyperparameters (light: no torch), so configs parse fast."""
