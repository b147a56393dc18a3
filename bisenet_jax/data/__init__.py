"""Data: where samples come from and how they become batches.

Sources: ``cityscapes`` (the label table and the official folder layout), ``folder`` (any
labelled image set, with Pascal VOC and ADE20K layouts), ``tfds`` (a prepared TFDS Cityscapes),
``synthetic`` (the demo datasets) and ``sources`` (from a ``specs.DatasetSpec`` to its classes
and splits). Their parts: ``images`` (reading image files), ``classes`` (``classes.txt``),
``class_sets`` (the official datasets' class names and colours), ``label_maps`` (mask values ->
classes), ``masks`` (mask files). ``records`` serves any file-backed source from raw arrays
decoded once (the training cache). Then ``transforms`` (the reference's train and test
transforms), ``normalization`` (the reference's Normalize, on the host or the device) and
``pipeline`` (grain batches).

Every source yields samples ``{'image': uint8 [H, W, 3] RGB, 'label': uint8 [H, W] class ids,
'name': str}`` with 255 as the ignore label.
"""
