"""The stages of `graphopt.optimize`, in order: lossless (the pass pipeline and its verification),
compress, quantize (with placement by speed), bench. Each is `run(model, ctx)`."""
