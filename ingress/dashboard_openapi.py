"""The dashboard's paths in the ingress's OpenAPI document (ingress/openapi.py). Pure.

The page and its assets need no credential (they hold no data); the data route needs
the admin key (`adminKey`), like every other /admin/v1 route.
"""

from __future__ import annotations

from typing import Any

from ingress.dashboard_api import ASSET_PATH, ASSETS, DATA_PATH, PAGE_PATH
from ingress.dashboard_panels import DEFAULT_WINDOW, WINDOWS
from ingress.openapi_parts import errors, json_content, ok, path_param

_DATA_FIELDS: list[str] = [
    "object",
    "window",
    "start_ms",
    "end_ms",
    "bucket_s",
    "generated_at_ms",
    "headline",
    "spend_by_team",
    "spend_by_model",
    "burn_down",
    "latency",
    "reliability",
    "teams",
    "batches",
]
_MONEY: dict[str, Any] = {"type": "string", "pattern": r"^-?\d+\.\d{9}$"}


def _data_schema() -> dict[str, Any]:
    series_panel = {
        "type": "object",
        "required": ["times_ms", "series"],
        "properties": {
            "times_ms": {"type": "array", "items": {"type": "integer"}},
            "series": {"type": "array", "items": {"type": "object"}},
        },
    }
    return {
        "type": "object",
        "required": _DATA_FIELDS,
        "properties": {
            "object": {"const": "dashboard"},
            "window": {"enum": list(WINDOWS)},
            "start_ms": {"type": "integer"},
            "end_ms": {"type": "integer"},
            "bucket_s": {"type": "integer", "minimum": 1},
            "generated_at_ms": {"type": "integer"},
            "headline": {
                "type": "object",
                "required": ["spend_usd", "calls", "requests", "failed", "saved_usd"],
                "properties": {"spend_usd": _MONEY, "saved_usd": _MONEY},
            },
            "spend_by_team": series_panel,
            "spend_by_model": series_panel,
            "burn_down": {"type": "object", "required": ["times_ms", "scopes"]},
            "latency": {"type": "array", "items": {"type": "object"}},
            "reliability": {"type": "object", "required": ["times_ms", "requests", "failed"]},
            "teams": {"type": "array", "items": {"type": "object"}},
            "batches": {"type": "array", "items": {"type": "object"}},
        },
    }


def dashboard_paths() -> dict[str, Any]:
    """GET the page, its assets, and the panels' data (ingress/dashboard_api.py)."""
    public: list[dict[str, list[str]]] = []
    asset = path_param("name")
    asset["schema"] = {"enum": sorted(ASSETS)}
    return {
        PAGE_PATH: {
            "get": {
                "operationId": "getDashboardPage",
                "summary": "The dashboard page (static HTML; the data comes from the data route "
                "with the admin key, which the page takes from a form or `#token=`).",
                "security": public,
                "responses": {
                    "200": ok("The page.", {"text/html": {"schema": {"type": "string"}}}),
                    **errors(("500",)),
                },
            }
        },
        ASSET_PATH: {
            "get": {
                "operationId": "getDashboardAsset",
                "summary": "The dashboard's script or style sheet (static).",
                "security": public,
                "parameters": [asset],
                "responses": {
                    "200": ok(
                        "The file.",
                        {
                            "text/javascript": {"schema": {"type": "string"}},
                            "text/css": {"schema": {"type": "string"}},
                        },
                    ),
                    **errors(("404", "500")),
                },
            }
        },
        DATA_PATH: {
            "get": {
                "operationId": "getDashboardData",
                "summary": "Every panel of the dashboard over one window, from ClickHouse: "
                "money as exact decimal strings, times as epoch milliseconds.",
                "security": [{"adminKey": []}],
                "parameters": [
                    {
                        "name": "window",
                        "in": "query",
                        "required": False,
                        "description": f"The period ending now (default {DEFAULT_WINDOW}).",
                        "schema": {"enum": list(WINDOWS)},
                    }
                ],
                "responses": {
                    "200": ok("The panels.", json_content(_data_schema())),
                    **errors(("400", "401", "403", "500", "503", "504")),
                },
            }
        },
    }
