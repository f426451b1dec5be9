"""`loom serve`: the HTTP API (tenants, keys, triggers, schedules), the Studio, metrics.

    from runtime.service import Service, create_app
"""

from runtime.service.app import create_app
from runtime.service.config import ServiceConfig
from runtime.service.keys import SCOPES, create_key
from runtime.service.service import Service

__all__ = ["SCOPES", "Service", "ServiceConfig", "create_app", "create_key"]
