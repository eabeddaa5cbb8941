"""Reading files safely without torch: regular files only, text as UTF-8, images checked for truncation.

Shared by the data readers (:mod:`multibox.data`) and the torch-free ONNX runtime (:mod:`multibox.onnx_runtime`),
so that both refuse the same bad files with the same messages. Nothing here imports torch.
"""
