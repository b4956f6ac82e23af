"""The keycloak-pep HTTP filter as envoy/envoy.yaml spells it: the one template every Envoy
configuration the benchmarks generate starts from (the tests' own Envoys read the same block,
tests/common/own_envoy.rs), so a setting changed there reaches every run."""
import copy
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENVOY_YAML = os.path.join(ROOT, "envoy", "envoy.yaml")


def shipped():
    """envoy/envoy.yaml's `keycloak-pep` filter entry of its ingress listener."""
    import yaml
    with open(ENVOY_YAML) as f:
        cfg = yaml.safe_load(f)
    listener = next(l for l in cfg["static_resources"]["listeners"] if l["name"] == "ingress")
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return next(f for f in hcm["http_filters"] if f["name"] == "keycloak-pep")


def keycloak_pep_filter(wasm, plugin, name="keycloak-pep"):
    """The shipped filter entry with another module file, plugin configuration (a dict or JSON
    text) and filter/VM name."""
    entry = copy.deepcopy(shipped())
    entry["name"] = name
    config = entry["typed_config"]["config"]
    config["name"] = name
    config["vm_config"]["vm_id"] = name
    config["vm_config"]["code"]["local"]["filename"] = os.path.join(ROOT, wasm)
    config["configuration"]["value"] = plugin if isinstance(plugin, str) else json.dumps(plugin or {})
    return entry
