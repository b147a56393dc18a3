"""Data: Cityscapes sources (folder, TFDS, synthetic demo), any labelled image set (folder, with
Pascal VOC and ADE20K layouts, and a synthetic demo), reference transforms, batching.

Every source yields samples `{'image': uint8 [H, W, 3] RGB, 'label': uint8 [H, W] class ids,
'name': str}` with 255 as the ignore label; `pipeline` turns a source into training batches
(grain) or padded evaluation batches.
"""

from bisenet_jax.data.cityscapes import (CLASS_NAMES, IGNORE_LABEL, LABEL_ID_TO_TRAIN_ID,
                                         NUM_CLASSES, PALETTE, TRAIN_ID_TO_LABEL_ID,
                                         CityscapesFolder)
from bisenet_jax.data.folder import (ADE20K_CLASSES, CITYSCAPES_CLASSES, VOC_CLASSES,
                                     Ade20kFolder, ClassSet, PascalVocFolder, SegmentationFolder,
                                     read_classes_file)
from bisenet_jax.data.pipeline import make_eval_batches, make_train_iterator
from bisenet_jax.data.synthetic import (GARDEN_CLASSES, ensure_synthetic_cityscapes,
                                        ensure_synthetic_folder, write_synthetic_cityscapes,
                                        write_synthetic_folder)
from bisenet_jax.data.tfds import TfdsCityscapes
