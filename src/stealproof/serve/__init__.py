"""HTTP gateway: serve a defended model over the Open Inference Protocol."""
