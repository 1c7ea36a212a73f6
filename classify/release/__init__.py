"""Distribution: what a finished stage-2 run becomes - the Hub repository (publish, its safety
checks in publish_guard, the model card from model_card/), the Space, the ONNX export, dapt-predict
for texts and files of any size, and the stage-2 command that may publish at the end. It imports the
training side (classify.model, classify.data, ...); the training side never imports it
(tests/test_architecture.py)."""
