"""Reading the model repository: Triton's version policies."""
from tritonclient.grpc import model_config_pb2

from latentserve.repository import select_versions

AVAILABLE = [1, 2, 3, 5]


def _policy(**kind) -> model_config_pb2.ModelConfig:
    return model_config_pb2.ModelConfig(version_policy=model_config_pb2.ModelVersionPolicy(**kind))


def test_version_policies_select_like_triton():
    Policy = model_config_pb2.ModelVersionPolicy
    assert select_versions(model_config_pb2.ModelConfig(), AVAILABLE) == (5,)  # default: latest 1
    assert select_versions(_policy(latest=Policy.Latest(num_versions=2)), AVAILABLE) == (5, 3)
    assert select_versions(_policy(all=Policy.All()), AVAILABLE) == (5, 3, 2, 1)
    assert select_versions(_policy(specific=Policy.Specific(versions=[2, 4])), AVAILABLE) == (2,)
