"""Checks of the deployment files (deploy/): nothing here builds an image or talks to a cluster;
the files must parse and name what the repository has."""

import re
import shlex

import yaml

from conftest import ROOT

DEPLOY = ROOT / 'deploy'


def dockerfile_instructions() -> list[tuple[str, str]]:
  text = re.sub(r'\\\n', ' ', (DEPLOY / 'Dockerfile').read_text())
  return [tuple(line.split(None, 1)) for line in text.splitlines()
          if line.strip() and not line.lstrip().startswith('#')]


def test_dockerfile_copies_existing_paths_and_starts_the_server_on_all_interfaces():
  instructions = dockerfile_instructions()
  copies = [shlex.split(args)[:-1] for op, args in instructions if op == 'COPY']
  assert copies and all((ROOT / source).exists() for sources in copies for source in sources)
  [entrypoint] = [args for op, args in instructions if op == 'ENTRYPOINT']
  command = ' '.join(yaml.safe_load(entrypoint))  # An exec-form list is YAML too.
  assert 'python -m bisenet_jax.serve --host 0.0.0.0' in command
  assert (ROOT / 'bisenet_jax' / 'serve' / '__main__.py').is_file()
  [base] = [args for op, args in instructions if op == 'FROM']
  assert base == 'python:3.11-slim'


def test_inference_services_expose_rest_and_grpc_with_readiness_and_autoscaling():
  services = list(yaml.safe_load_all((DEPLOY / 'kserve' / 'inferenceservice.yaml').read_text()))
  ports = {}
  for service in services:
    assert (service['apiVersion'], service['kind']) == ('serving.kserve.io/v1beta1',
                                                        'InferenceService')
    predictor = service['spec']['predictor']
    assert 1 <= predictor['minReplicas'] <= predictor['maxReplicas']
    assert (predictor['scaleMetric'], predictor['scaleTarget'] > 0) == ('concurrency', True)
    [container] = predictor['containers']
    assert container['resources']['requests'] and container['resources']['limits']
    assert '--host' not in container.get('args', [])  # The image's entrypoint sets it.
    [port] = container['ports']  # Knative routes one port per container.
    ports[port['name']] = port['containerPort']
    probe = container['readinessProbe']
    assert probe.get('httpGet', {}).get('path', '/v2/health/ready') == '/v2/health/ready'
  assert ports == {'http1': 8080, 'h2c': 8081}
