"""What the agent reports when a Docker call fails (pure: docker_runner.describe_docker_error)."""

from __future__ import annotations

import docker.errors
import pytest
import requests

from edb_local.agent.docker_runner import describe_docker_error


def _api_error(status: int, explanation: str, cls: type[docker.errors.APIError] = docker.errors.APIError,
               ) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return cls(f"{status} error", response=response, explanation=explanation)


def test_a_missing_image_says_it_is_never_pulled() -> None:
    exc = _api_error(404, "No such image: localhost:5000/x:1", docker.errors.ImageNotFound)
    assert describe_docker_error(exc) == ("image not found locally (never pulled; build it with `edb images build`): "
                                          "No such image: localhost:5000/x:1")


@pytest.mark.parametrize("engine_answers", [True, False])
def test_a_client_error_is_a_refusal_of_the_container_whatever_the_engine_does_next(engine_answers: bool) -> None:
    exc = _api_error(400, "invalid CapAdd: unknown capability: \"CAP_X\"")
    assert describe_docker_error(exc, engine_answers=engine_answers) == (
        "Docker refused the container: invalid CapAdd: unknown capability: \"CAP_X\"")


def test_a_server_error_from_an_engine_that_answers_is_a_refusal() -> None:
    exc = _api_error(500, "OCI runtime create failed: bind source path does not exist")
    assert describe_docker_error(exc) == (
        "Docker refused the container: OCI runtime create failed: bind source path does not exist")


def test_a_server_error_from_an_engine_that_no_longer_answers_is_the_engine_going_away() -> None:
    exc = _api_error(500, "failed to update store for object type *libnetwork.endpoint: open : no such file")
    assert describe_docker_error(exc, engine_answers=False) == (
        "Docker Engine unreachable (it is stopping): failed to update store for object type *libnetwork.endpoint: "
        "open : no such file")


@pytest.mark.parametrize("exc", [requests.exceptions.ConnectionError("Connection aborted."),
                                 docker.errors.DockerException("Error while fetching server API version")])
def test_no_connection_is_the_engine_unreachable(exc: Exception) -> None:
    assert describe_docker_error(exc) == f"Docker Engine unreachable: {type(exc).__name__}"
