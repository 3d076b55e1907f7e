"""The official `kubernetes` client, where only it will do: kubeconfigs whose users
authenticate by exec plugins or auth providers (kube/api.py reads the rest itself), and the
client object the what-if tools' node reads use. The agent image (policyd[node]) has no
client: such a kubeconfig there is refused with the reason."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import kopf


def api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """In-cluster config when running in a pod (and no kubeconfig or context is given), else
    the kubeconfig file (`None`: $KUBECONFIG or ~/.kube/config), at `context` if given."""
    try:
        from kubernetes import client, config
    except ImportError as e:  # the agent image (policyd[node]) has no client
        raise RuntimeError("this needs the `kubernetes` Python client (pip install 'policyd[agent]'): "
                           "the kubeconfig's user authenticates by an exec plugin or auth provider, "
                           "which only that client reads") from e

    if kubeconfig is None and context is None:
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            pass
    return config.new_client_from_config(config_file=kubeconfig, context=context)


def connection_info(kubeconfig: str | None, context: str | None = None) -> kopf.ConnectionInfo:
    """kopf's credentials from the same configuration the `kubernetes` client reads (an
    explicit kubeconfig wins over the in-cluster service account)."""
    import kopf

    cfg = api_client(kubeconfig, context).configuration
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return kopf.ConnectionInfo(server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
                               username=cfg.username or None, password=cfg.password or None, scheme=scheme, token=token,
                               certificate_path=cfg.cert_file, private_key_path=cfg.key_file)
