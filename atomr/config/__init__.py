"""Reading what users write: YAML files and mappings into validated core values.

`deployment_from_dict` / `load_deployments` build `Deployment` values (inferring the runtime and
resolving local model folders through the runtime catalog), `load_policies` the routes and
cascades of a file, `load_yaml` parses a file with errors naming the line. Every error names the
file, the field and the problem.

May import: `atomr.core`, `atomr.runners` (the runtime catalog only: no runner module, no engine).
"""

from atomr.config.deployments import deployment_from_dict, load_deployments
from atomr.config.files import load_policies, load_yaml

__all__ = ["deployment_from_dict", "load_deployments", "load_policies", "load_yaml"]
