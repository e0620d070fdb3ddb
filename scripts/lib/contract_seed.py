"""Seeds a live Conveyor API for scripts/contract and writes the Schemathesis
configuration that points every operation needing an id at a real one.

usage: contract_seed.py BASE_URL USER_TOKEN ADMIN_TOKEN MAX_EXAMPLES OUT_DIR

Writes OUT_DIR/user.toml (every non-admin operation, user token) and
OUT_DIR/admin.toml (the admin operations, admin token), with fixed ids for
the examples, coverage and fuzzing phases, and the same without fixed ids
for the stateful phase (user-stateful.toml, admin-stateful.toml).
Operations that delete or replace get objects of their own, so the others
keep a live one.
"""

import json
import sys
import time
import urllib.error
import urllib.request

BASE, USER, ADMIN, EXAMPLES, OUT = sys.argv[1:6]
API = BASE + "/api/v1"
# An official template with defaults for every setting (synced at migrate).
OFFICIAL_SLUG = "slack-post-message"


def call(method, path, token, body=None, expect=(200, 201, 202, 204)):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(API + path, data=data, method=method)
    request.add_header("Authorization", "Bearer " + token)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    if status not in expect:
        sys.exit(f"seeding: {method} {path} answered {status}: {text}")
    return json.loads(text) if text else None


def connector(name):
    return {
        "name": name,
        "input_schema": {"type": "object"},
        "steps": [
            {
                "name": "health",
                "method": "GET",
                "url": BASE + "/healthz",
                "extract": {"status": "$.status"},
            }
        ],
    }


def community_template(slug):
    with open(f"templates/{OFFICIAL_SLUG}.json") as f:
        template = json.load(f)
    # The version the approve example names, whatever the official one is at.
    template.update(slug=slug, name="Contract check submission", version="1.0.0")
    return template


def wait_finished(execution_id):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        execution = call("GET", f"/executions/{execution_id}", USER)
        if execution["status"] in ("succeeded", "failed", "cancelled"):
            if execution["status"] != "succeeded":
                sys.exit(f"seeding: the seeded execution ended {execution['status']}: {execution}")
            return
        time.sleep(0.2)
    sys.exit("seeding: the seeded execution did not finish within 60 s")


kept = call("POST", "/connectors", USER, connector("Contract: executions"))["id"]
replaced = call("POST", "/connectors", USER, connector("Contract: replaced"))["id"]
deleted = call("POST", "/connectors", USER, connector("Contract: deleted"))["id"]
first = call("POST", f"/connectors/{kept}/execute", USER, {"input": {"n": 1}})["id"]
call("POST", f"/connectors/{kept}/execute", USER, {"input": {"n": 2}})
wait_finished(first)
cursor = call("GET", "/executions?limit=1", USER)["next_cursor"]
if not cursor:
    sys.exit("seeding: two executions gave no next_cursor")
call("PUT", "/credentials/contract-cred", USER, {"data": {"token": "contract-token"}})
call("PUT", "/credentials/contract-doomed", USER, {"data": {"token": "contract-token"}})
call("PUT", "/credentials/contract-oauth", USER,
     {"kind": "oauth2_authorization_code", "data": {"client_id": "contract-client"},
      "oauth": {"provider": "hubspot"}})
api_key = call("POST", "/api-keys", USER, {"name": "contract: revoked"})["id"]
call("GET", f"/templates/{OFFICIAL_SLUG}", USER)
for slug in ("community-contract-reviewed", "community-contract-retired"):
    call("POST", "/templates", USER, community_template(slug))
schedule = call("POST", f"/connectors/{kept}/schedules", USER, {"cron": "@yearly"})["id"]
doomed_schedule = call("POST", f"/connectors/{kept}/schedules", USER, {"cron": "@yearly"})["id"]
hook = call("POST", f"/connectors/{kept}/triggers", USER, {"verification": {"type": "none"}})["id"]
doomed_hook = call("POST", f"/connectors/{kept}/triggers", USER, {"verification": {"type": "none"}})["id"]
subscription = call("POST", "/webhooks/subscriptions", USER,
                    {"url": "https://example.com/contract-events", "events": ["*"]})["id"]
doomed_subscription = call("POST", "/webhooks/subscriptions", USER,
                           {"url": "https://example.com/contract-events", "events": ["*"]})["id"]


def operation(names, **parameters):
    """Fixed parameter values for the operations named `METHOD /path`."""
    return {"include-name": [f"{n.split()[0]} /api/v1{n.split()[1]}" for n in names],
            "parameters": parameters}


user_operations = [
    {"include-tag": "admin", "enabled": False},
    operation(["GET /connectors/{id}", "POST /connectors/{id}/execute",
               "POST /connectors/{id}/execute/batch", "GET /connectors/{id}/stats",
               "POST /connectors/{id}/upgrade"], id=kept),
    operation(["POST /connectors/{id}/schedules", "GET /connectors/{id}/schedules"], id=kept),
    operation(["GET /schedules/{id}", "PATCH /schedules/{id}", "POST /schedules/{id}/pause",
               "POST /schedules/{id}/resume"], id=schedule),
    operation(["DELETE /schedules/{id}"], id=doomed_schedule),
    operation(["POST /connectors/{id}/triggers", "GET /connectors/{id}/triggers"], id=kept),
    operation(["GET /triggers/{id}", "GET /triggers/{id}/deliveries"], id=hook),
    operation(["DELETE /triggers/{id}"], id=doomed_hook),
    operation(["GET /executions/{id}/callbacks"], id=first),
    operation(["GET /webhooks/subscriptions/{id}", "PATCH /webhooks/subscriptions/{id}",
               "GET /webhooks/subscriptions/{id}/deliveries"], id=subscription),
    operation(["DELETE /webhooks/subscriptions/{id}"], id=doomed_subscription),
    operation(["PUT /connectors/{id}"], id=replaced),
    operation(["DELETE /connectors/{id}"], id=deleted),
    operation(["GET /connectors/{id}/executions"], id=kept, cursor=cursor),
    operation(["GET /executions"], cursor=cursor),
    operation(["GET /executions/{id}", "POST /executions/{id}/cancel",
               "POST /executions/{id}/rerun", "GET /executions/{id}/events"], id=first),
    operation(["GET /credentials/{name}", "PUT /credentials/{name}"], name="contract-cred"),
    operation(["DELETE /credentials/{name}"], name="contract-doomed"),
    operation(["POST /credentials/{name}/oauth/start"], name="contract-oauth"),
    operation(["DELETE /api-keys/{id}"], id=api_key),
    operation(["GET /templates/{slug}", "POST /templates/{slug}/install",
               "POST /templates/{slug}/ratings"], slug=OFFICIAL_SLUG),
]
admin_operations = [
    {"exclude-tag": "admin", "enabled": False},
    operation(["GET /admin/executions"], cursor=cursor),
    operation(["GET /admin/workspaces/{id}/usage"], id="contract"),
    operation(["PUT /admin/templates/{slug}", "POST /admin/templates/{slug}/feature",
               "DELETE /admin/templates/{slug}/feature", "GET /admin/templates/{slug}/metrics"],
              slug=OFFICIAL_SLUG),
    operation(["POST /admin/templates/{slug}/approve", "POST /admin/templates/{slug}/reject"],
              slug="community-contract-reviewed"),
    operation(["DELETE /admin/templates/{slug}"], slug="community-contract-retired"),
]

# Where a static schema cannot say what the API checks, a schema-valid body
# may still be refused with 422 naming the field, and only there: what a
# definition means (its templates, URLs, JSONPath, JSON Schema, retry
# delays against each other), which settings and credentials a template
# needs, whether an input matches its connector's own input_schema
# (which other operations of the run may change), and whether an API key's
# expires_at lies in the future (a time relative to now), and whether a
# retention plan and its days go together (`custom` needs days, the others
# refuse them), and whether a schedule's cron expression and time zone
# parse and its end_at lies in the future, and whether a trigger's secret
# suits its verification type and its input mapping parses, and whether
# the version an admin approves is one of the template's stored versions
# (the stateful phase reaches approve with versions it made up).
SEMANTIC_422 = [
    "create_connector", "update_connector", "submit_template", "install_template",
    "admin_create_template", "admin_update_template",
    "execute_connector", "execute_connector_batch", "create_api_key", "create_workspace_key",
    "put_retention",
    # A credential's kind decides which `data` fields and `oauth` settings
    # it needs (client_id for OAuth, a known preset for its grant, ...).
    "put_credential",
    "create_schedule", "update_schedule", "create_trigger",
    # Workspace ids in paths: the document states their pattern (no C0/C1
    # controls), but generated path values sometimes carry a C1 control
    # (U+0080..U+009F) anyway, which the API refuses with 422 naming `id`.
    "list_members", "put_member", "list_workspace_keys",
    # Whether `version` is a version of that template is data, not schema
    # (official templates move on; the stateful phase approves those too).
    "admin_approve_template",
    # A subscription's URL must parse as an absolute http(s) URL without
    # credentials, and its event types may not repeat (utoipa cannot state
    # uniqueItems): the schema's pattern only says how it starts.
    "create_subscription", "update_subscription",
]
default_accepted = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
# A cursor is opaque: only a `next_cursor` the API handed out is one (the
# fixed-id phases pass a real one; the stateful phase may not).
CURSOR_400 = ["list_executions", "list_connector_executions", "admin_list_executions"]
# A usage window is at most 366 days, `from` before `to`: a rule between two
# parameters that a schema cannot state.
WINDOW_400 = ["workspace_usage", "admin_usage"]
# The OAuth callback is authenticated by a single-use `state` that only
# POST /credentials/{name}/oauth/start hands out: any other is refused with
# 400 (and a page saying why), whatever its shape.
OAUTH_400 = ["oauth_callback"]


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def write(name, token, operations):
    lines = [
        f"headers = {toml_value({'Authorization': 'Bearer ' + token})}",
        # One worker: with Schemathesis' worker threads, Hypothesis on
        # CPython 3.11 (Debian 12's) intermittently dies with "SystemError:
        # AST constructor recursion depth mismatch", a CPython bug.
        "workers = 1",
        "[generation]",
        f"max-examples = {int(EXAMPLES)}",
        'database = "none"',
        # PostgreSQL cannot store NUL, so every JSON body refuses it (422,
        # README.md); the document cannot say so for free-form values.
        "allow-x00 = false",
        "",
    ]
    for op in operations + [
        {"include-operation-id": SEMANTIC_422,
         "checks": {"positive_data_acceptance": {"expected-statuses": default_accepted + ["422"]}}},
        {"include-operation-id": CURSOR_400,
         "checks": {"positive_data_acceptance": {"expected-statuses": default_accepted + ["400"]}}},
        {"include-operation-id": WINDOW_400,
         "checks": {"positive_data_acceptance": {"expected-statuses": default_accepted + ["400"]}}},
        {"include-operation-id": OAUTH_400,
         "checks": {"positive_data_acceptance": {"expected-statuses": default_accepted + ["400"]}}},
    ]:
        lines.append("[[operations]]")
        for key, value in op.items():
            lines.append(f"{key} = {toml_value(value)}")
        lines.append("")
    with open(f"{OUT}/{name}.toml", "w") as f:
        f.write("\n".join(lines))


# Fixed ids for the examples, coverage and fuzzing phases; the stateful
# phase follows links from what it creates, so fixed ids would only
# contradict them (a "created" object that is the seeded one).
def selection(operations):
    return [op for op in operations if "enabled" in op]


write("user", USER, user_operations)
write("user-stateful", USER, selection(user_operations))
write("admin", ADMIN, admin_operations)
write("admin-stateful", ADMIN, selection(admin_operations))
print(f"seeded: connector {kept}, execution {first}, credential contract-cred, "
      f"API key {api_key}, templates {OFFICIAL_SLUG}, community-contract-reviewed, community-contract-retired")
