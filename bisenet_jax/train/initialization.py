"""Where a run's variables start: a whole model to fine-tune, an ImageNet backbone, or init."""

from __future__ import annotations

import jax
from flax import traverse_util

from bisenet_jax import checkpoint, models
from bisenet_jax.errors import UserError
from bisenet_jax.interop import imagenet, pretrained
from bisenet_jax.specs import TrainSpec
from bisenet_jax.train.metrics_log import log


def initial_variables(spec: TrainSpec, model: models.Segmentor) -> dict | None:
  """Variables to start from: a fine-tuning checkpoint, an ImageNet backbone, or None (init).

  Prints (on process 0) what was loaded.
  """
  fresh = lambda: models.init_variables(model, jax.random.key(spec.seed))  # noqa: E731
  if spec.init_checkpoint:
    loaded, variables, _ = checkpoint.load_model(spec.init_checkpoint)
    if loaded.name != spec.model.name:
      raise UserError(f'{spec.init_checkpoint} holds a {loaded.name} model but config.model.name '
                      f'is {spec.model.name}: fine-tune from a {spec.model.name} checkpoint, or '
                      f'train {loaded.name} (--config.model.name={loaded.name}; its recipe is '
                      f'{loaded.network.config}).')
    if loaded.stem != spec.model.stem:
      raise UserError(f'{spec.init_checkpoint} has the {loaded.stem} ResNet stem but '
                      f'config.model.stem is {spec.model.stem}: set '
                      f'--config.model.stem={loaded.stem}.')
    variables, report = transfer_variables(variables, fresh(), models.classifier_paths(spec.model))
    log(f'{spec.init_checkpoint}: {report}')
    return variables
  if spec.init_backbone:
    # Every process resolves the file (an official name is downloaded into the cache once).
    path = pretrained.resolve(spec.init_backbone, progress=jax.process_index() == 0)
    variables, report = imagenet.load_backbone(path, fresh(), spec.model)
    log(f'{path}: {report}')
    return variables
  return None


def transfer_variables(loaded: dict, fresh: dict,
                       classifiers: frozenset[tuple[str, ...]]) -> tuple[dict, str]:
  """``loaded`` in ``fresh``'s place, keeping ``fresh``'s classifiers if the class counts differ.

  Fine-tuning to another class set: every tensor but the classifiers (the heads' last 1x1
  convolutions, ``models.classifier_paths``) comes from ``loaded``; those keep their fresh
  initialisation.

  Returns:
    (variables, a one-line report of what was loaded and what was re-initialised).

  Raises:
    UserError: anything but the classifiers differs (another architecture).
  """
  loaded_flat, fresh_flat = (traverse_util.flatten_dict(v) for v in (loaded, fresh))
  if loaded_flat.keys() != fresh_flat.keys():
    raise UserError('the checkpoint does not fit the model (its layers differ): fine-tune from '
                    'a checkpoint of the same architecture.')
  # Module paths (without the collection) whose tensors change shape.
  changed = sorted({key[1:-1] for key in fresh_flat
                    if loaded_flat[key].shape != fresh_flat[key].shape})
  if any(path not in classifiers for path in changed):
    raise UserError(f'the checkpoint does not fit the model (layers '
                    f'{[".".join(p) for p in changed]} differ): fine-tune from a checkpoint of '
                    'the same architecture.')
  merged = {key: fresh_flat[key] if key[1:-1] in changed else loaded_flat[key]
            for key in fresh_flat}
  report = f'loaded {sum(key[1:-1] not in changed for key in fresh_flat)} tensors'
  if changed:
    kernel = ('params', *changed[0], 'kernel')
    report += (f'; re-initialised {", ".join(".".join(path) for path in changed)} '
               f'({loaded_flat[kernel].shape[-1]} -> {fresh_flat[kernel].shape[-1]} classes)')
  return traverse_util.unflatten_dict(merged), report

