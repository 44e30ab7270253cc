"""Explanations of a trained model: Grad-CAM and filter visualisation (visualise), for a run folder (run)."""
