"""Several devices and machines: the TF_CONFIG cluster, what each worker does differently, the contained Keras fix."""
