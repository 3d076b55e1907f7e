"""The agent's own reading of credentials (kube/api.py), held to what kubectl does: the
service account in a pod, else the kubeconfig's current context with paths relative to
the file; embedded certificates really load into a TLS context; users it does not read
(exec plugins, auth providers) go to the `kubernetes` client."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from policyd.kube import api
from realcluster.pki import PKI


def kubeconfig(cluster: dict, user: dict, context: str = "c") -> dict:
    return {"apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": "k", "cluster": cluster}, {"name": "other", "cluster": {"server": "https://wrong:1"}}],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}, {"name": "d", "context": {"cluster": "other", "user": "u"}}]}


def test_the_current_context_with_paths_relative_to_the_file(tmp_path: Path):
    (tmp_path / "tok").write_text("secret\n")
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(kubeconfig({"server": "https://api:6443", "certificate-authority": "ca.crt"},
                                              {"tokenFile": "tok"})))
    info = api.credentials(str(path))
    assert (info.server, info.ca_path, info.token, info.scheme) == ("https://api:6443", str(tmp_path / "ca.crt"), "secret", "Bearer")
    assert api.auth_headers(info)[0]["Authorization"] == "Bearer secret"


def test_the_service_account_in_a_pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "token").write_text("sa-token")
    monkeypatch.setattr(api, "SERVICE_ACCOUNT", tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    info = api.credentials(None)
    assert (info.server, info.ca_path, info.token) == ("https://[fd00::1]:443", str(tmp_path / "ca.crt"), "sa-token")
    (tmp_path / "token").write_text("rotated")
    assert api.credentials(None).token == "rotated", "read again on every call"


def test_embedded_certificates_load_into_tls(tmp_path: Path):
    pki = PKI(tmp_path / "pki")
    cert = pki.issue("client", "policyd-test")

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(kubeconfig({"server": "https://api:6443", "certificate-authority-data": b64(pki.ca.cert)},
                                              {"client-certificate-data": b64(cert.cert), "client-key-data": b64(cert.key)})))
    info = api.credentials(str(path))
    ctx = api.ssl_context(info)
    assert ctx is not None and ctx.get_ca_certs() and ctx.check_hostname
    assert "Authorization" not in api.auth_headers(info)[0]


def test_exec_plugins_and_auth_providers_are_left_to_the_kubernetes_client():
    for user in ({"exec": {"command": "aws"}}, {"auth-provider": {"name": "gcp"}}):
        with pytest.raises(api.UnsupportedKubeconfig):
            api.from_kubeconfig(kubeconfig({"server": "https://api:6443"}, user), Path("/"))


def test_collections_of_the_watched_kinds():
    assert {api.path_of(k) for k in api.PLURALS} == {
        "/api/v1/namespaces", "/api/v1/pods", "/apis/networking.k8s.io/v1/networkpolicies", "/api/v1/nodes",
        "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies"}


def test_the_agent_loads_kopf_without_the_kubernetes_client():
    """kopf would import the client only to recognise its models (19 MB in every agent);
    the client stays importable for the tools that use it."""
    import subprocess
    import sys

    code = ("import sys; from policyd.kube import cli, operator; assert 'kubernetes' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith('kubernetes'))[:5]; "
            "import kubernetes.client; from policyd.kube.sdk import api_client; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert r.stdout.strip() == "ok", r.stderr
