"""Cityscapes from a prepared TFDS dataset (`cityscapes/semantic_segmentation`), without TensorFlow.

`tfds.data_source` reads the dataset's ArrayRecord files and decodes them with NumPy, so
reading needs no TensorFlow; preparing it does (`tfds build` runs the builder with
tensorflow-cpu). The builder stores the official `*_gtFine_labelIds.png` content, i.e.
labelIds 0..33 as uint8 [H, W, 1], which this source maps to trainIds with the same table as
`CityscapesFolder`.
"""

from bisenet_jax.data.cityscapes import LABEL_ID_TO_TRAIN_ID
from bisenet_jax.errors import UserError

# TFDS names the evaluation split 'validation'; the project (and the folder layout) says 'val'.
_SPLIT_NAMES = {'val': 'validation'}


class TfdsCityscapes:
  """Random-access source over a prepared TFDS Cityscapes dataset; samples as CityscapesFolder's."""

  def __init__(self, split, data_dir=None, builder_config='semantic_segmentation'):
    """Opens the split.

    Args:
      split: 'train', 'val' (or 'validation'), 'test', or any TFDS split expression.
      data_dir: TFDS data folder; None uses TFDS's default ($TFDS_DATA_DIR or
        ~/tensorflow_datasets).
      builder_config: the Cityscapes builder config to read.

    Raises:
      UserError: the dataset is not prepared there in a random-access (array_record) format.
    """
    # Imported here: TFDS takes seconds to import and only this source needs it.
    import tensorflow_datasets as tfds

    name = f'cityscapes/{builder_config}'
    try:
      # download=False: never start preparing (which needs TensorFlow and the manual zips).
      self._source = tfds.data_source(
          name, split=_SPLIT_NAMES.get(split, split), data_dir=data_dir, download=False)
    except NotImplementedError as error:
      # TFDS raises this both when nothing is prepared and when only TFRecord files exist.
      raise UserError(
          f'No array_record copy of {name} in {data_dir or "the default TFDS data_dir"}: prepare '
          f'it with `pip install tensorflow-cpu && tfds build {name} --manual_dir DIR_WITH_ZIPS '
          '--file_format=array_record` (add --data_dir to match), or use the folder layout'
      ) from error

  def __len__(self):
    return len(self._source)

  def image_sizes(self):
    """(height, width) of every sample: TFDS's Cityscapes features are all 1024x2048 frames."""
    return [(1024, 2048)] * len(self)

  def __getitem__(self, index):
    """Returns `{'image': uint8 [H, W, 3] RGB, 'label': uint8 [H, W] trainIds, 'name': str}`."""
    example = self._source[index]
    image_id = example['image_id']
    if isinstance(image_id, bytes):  # records decode Text features to bytes (mock_data gives str)
      image_id = image_id.decode()
    city = image_id.split('_', 1)[0]
    return {'image': example['image_left'],
            'label': LABEL_ID_TO_TRAIN_ID[example['segmentation_label'][..., 0]],
            'name': f'{city}/{image_id}'}
