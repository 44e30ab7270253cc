"""What a run exports: the TF Serving SavedModel, and the other deployment formats with their proof.

    saved_model.py   versioned, atomic SavedModel (bytes in, answers out) and its metadata
    formats.py       LiteRT, ONNX, OpenVINO: converting a Keras model and running the file in its own runtime
    contract.py      the JSON beside a float-input file: what a caller must feed it and what comes back
    proof.py         each file against the Keras model: output parity, the task's metric, latency
    deploy.py        converts, proves and writes the formats of one model as one atomic folder
"""
