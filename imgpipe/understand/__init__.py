"""About a trained model or a data set: the data doctor, the robustness card, explanations, the layer table."""
