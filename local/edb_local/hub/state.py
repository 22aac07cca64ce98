"""The hub's registry, twins, configurations and deployments, kept in memory and written through
to the store. No sockets here; a desired-property change is announced through ``on_desired``
(the MQTT side pushes it to a connected client, the edgeHub side rebuilds routes)."""

from __future__ import annotations

import base64
import copy
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from edb_local.hub import deployments, errors
from edb_local.hub import twin as twins
from edb_local.hub.errors import HubError
from edb_local.hub.registry import SYSTEM_MODULES, IdentityRecord, check_id, identity_from_request, now_iso
from edb_local.hub.store import Store
from edb_local.hub.topics import Identity
from edb_local.hub.twin import Twin
from edb_local.hub.twinquery import parse_twin_query, run_twin_query

DesiredListener = Callable[[Identity, Twin, dict[str, Any]], None]
ConnectionInfo = Callable[[Identity], tuple[bool, str, str]]  # connected, state updated, last activity
#: A service-side twin change: identity, the new twin, the changed tags (or None), the desired patch
#: (or None), and whether the whole twin was replaced (PUT) rather than patched.
TwinChangeListener = Callable[[Identity, Twin, dict[str, Any] | None, dict[str, Any] | None, bool], None]


def _not_found(what: str) -> HubError:
    return HubError(f"{what} not found", code=errors.NOT_FOUND)


def _check_etag(if_match: str | None, etag: str) -> None:
    if not twins.etag_matches(if_match, etag):
        raise HubError("etag does not match (If-Match)", code=errors.PRECONDITION_FAILED)


class HubState:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.identities: dict[Identity, IdentityRecord] = {}
        self.twins: dict[Identity, Twin] = {}
        self.configurations: dict[str, dict[str, Any]] = {}
        self.device_configurations: dict[str, dict[str, Any]] = {}  # device -> {"applied": [...], "targeted": [...]}
        self.on_desired: DesiredListener = lambda identity, twin, patch: None
        self.connection_info: ConnectionInfo = lambda identity: (False, now_iso(), now_iso())
        self.on_twin_change: TwinChangeListener = lambda identity, twin, tags, desired, replaced: None
        for device_id, module_id, record in store.identities():
            self.identities[Identity(device_id, module_id)] = IdentityRecord.from_record(record)
        for device_id, module_id, record in store.twins():
            self.twins[Identity(device_id, module_id)] = Twin.from_record(device_id, module_id, record)
        for config in store.configurations():
            self.configurations[config["id"]] = config
        for device_id, doc in store.deployments():
            self.device_configurations[device_id] = doc

    # -- identities ------------------------------------------------------------------------

    def identity(self, identity: Identity) -> IdentityRecord:
        record = self.identities.get(identity)
        if record is None:
            raise _not_found("device" if identity.module_id is None else "module")
        return record

    def put_identity(self, device_id: str, module_id: str | None, body: Any,
                     if_match: str | None) -> tuple[IdentityRecord, bool]:
        key = Identity(device_id, module_id)
        existing = self.identities.get(key)
        if module_id is not None and Identity(device_id) not in self.identities:
            raise _not_found("device")
        if existing is None and if_match not in (None, "*", '"*"'):
            raise HubError("identity does not exist (If-Match given)", code=errors.PRECONDITION_FAILED)
        if existing is not None:
            if if_match is None:
                raise HubError("identity already exists", code=errors.CONFLICT)
            _check_etag(if_match, existing.etag)
        record = identity_from_request(device_id, module_id, body, existing)
        self.identities[key] = record
        self.store.put_identity(device_id, module_id, record.to_record())
        if key not in self.twins:
            self._put_twin(Twin(device_id=device_id, module_id=module_id))
        if module_id is None and record.iot_edge:
            for system_module in SYSTEM_MODULES:
                sys_key = Identity(device_id, system_module)
                if sys_key not in self.identities:
                    sys_record = identity_from_request(device_id, system_module, {}, None)
                    self.identities[sys_key] = sys_record
                    self.store.put_identity(device_id, system_module, sys_record.to_record())
                if sys_key not in self.twins:
                    self._put_twin(Twin(device_id=device_id, module_id=system_module))
        return record, existing is None

    def delete_identity(self, identity: Identity, if_match: str | None) -> None:
        record = self.identity(identity)
        _check_etag(if_match, record.etag)
        doomed = [identity] if identity.module_id else [i for i in self.identities if i.device_id == identity.device_id]
        for key in doomed:
            del self.identities[key]
            self.store.delete_identity(key.device_id, key.module_id)
            self.twins.pop(key, None)
            self.store.delete_twin(key.device_id, key.module_id)
        if identity.module_id is None:
            for key in [k for k in self.twins if k.device_id == identity.device_id]:
                del self.twins[key]
                self.store.delete_twin(key.device_id, key.module_id)
            self.device_configurations.pop(identity.device_id, None)
            self.store.put_deployment(identity.device_id, None)

    def devices(self) -> list[IdentityRecord]:
        return [r for i, r in self.identities.items() if i.module_id is None]

    def modules(self, device_id: str) -> list[IdentityRecord]:
        self.identity(Identity(device_id))
        return [r for i, r in self.identities.items() if i.device_id == device_id and i.module_id is not None]

    def identity_json(self, identity: Identity) -> dict[str, Any]:
        connected, updated, activity = self.connection_info(identity)
        return self.identity(identity).service_json(connected=connected, state_updated=updated, last_activity=activity)

    # -- twins -----------------------------------------------------------------------------

    def _put_twin(self, twin: Twin) -> None:
        key = Identity(twin.device_id, twin.module_id)
        self.twins[key] = twin
        self.store.put_twin(twin.device_id, twin.module_id, twin.to_record())

    def twin(self, identity: Identity) -> Twin:
        self.identity(identity)
        twin = self.twins.get(identity)
        if twin is None:
            twin = Twin(device_id=identity.device_id, module_id=identity.module_id)
            self._put_twin(twin)
        return twin

    def twin_json(self, identity: Identity) -> dict[str, Any]:
        record = self.identity(identity)
        twin = self.twin(identity)
        connected, _updated, activity = self.connection_info(identity)
        doc: dict[str, Any] = {"deviceId": twin.device_id}
        if identity.module_id is not None:
            doc["moduleId"] = identity.module_id
        doc.update({
            "etag": twin.etag,
            "deviceEtag": self.identities[Identity(identity.device_id)].etag
            if Identity(identity.device_id) in self.identities else record.etag,
            "status": self.identities.get(Identity(identity.device_id), record).status,
            "statusUpdateTime": record.status_updated,
            "connectionState": "Connected" if connected else "Disconnected",
            "lastActivityTime": activity,
            "cloudToDeviceMessageCount": 0,
            "authenticationType": "sas",
            "x509Thumbprint": {"primaryThumbprint": None, "secondaryThumbprint": None},
            "modelId": twin.model_id,
            "version": twin.version,
            "tags": copy.deepcopy(twin.tags),
            "properties": copy.deepcopy(twin.service_properties()),
        })
        if identity.module_id is None:
            doc["capabilities"] = {"iotEdge": record.iot_edge}
            doc["deviceScope"] = record.device_scope
            doc["parentScopes"] = record.parent_scopes
        configs = self.device_configurations.get(identity.device_id)
        if configs and identity.module_id in (None, "$edgeAgent"):
            doc["configurations"] = {
                cid: {"status": "Applied" if cid in configs.get("applied", []) else "Targeted"}
                for cid in configs.get("targeted", [])}
        return doc

    def set_model_id(self, identity: Identity, model_id: str) -> None:
        """Record the Plug and Play model id a client announced when it connected (IoT Hub keeps the
        last announced one on the twin; a connection that announces none clears it)."""
        twin = self.twin(identity)
        if twin.model_id != model_id:
            self._put_twin(replace(twin, model_id=model_id))

    def set_reported(self, identity: Identity, patch: Any) -> Twin:
        twin = twins.apply_reported_patch(self.twin(identity), patch)
        self._put_twin(twin)
        return twin

    def _desired_changed(self, identity: Identity, change: twins.DesiredChange) -> None:
        self._put_twin(change.twin)
        if change.patch is not None:
            self.on_desired(identity, change.twin, change.patch)

    def update_twin(self, identity: Identity, body: Any, if_match: str | None, *, replace: bool) -> Twin:
        """PATCH (merge) or PUT (replace) tags and desired properties from the service."""
        if not isinstance(body, dict):
            raise HubError("twin body must be a JSON object", code=errors.TWIN_INVALID)
        twin = self.twin(identity)
        _check_etag(if_match, twin.etag)
        props = body.get("properties") or {}
        if not isinstance(props, dict):
            raise HubError("properties must be an object", code=errors.TWIN_INVALID)
        tags = body.get("tags")
        if replace:
            twin = twins.set_tags(twin, twins.strip_read_only(tags) if isinstance(tags, dict) else {})
            change = twins.replace_desired(twin, props.get("desired"))
        else:
            if tags is not None:
                twin = twins.patch_tags(twin, tags)
            change = twins.apply_desired_patch(twin, props.get("desired") or {})
        before = self.twin(identity)
        tags_changed = change.twin.tags != before.tags
        self._desired_changed(identity, change)
        if tags_changed or change.patch is not None:
            desired = {k: v for k, v in change.patch.items() if k != "$version"} if change.patch else None
            self.on_twin_change(identity, change.twin, twins.diff(before.tags, change.twin.tags) if tags_changed
                                else None, desired, replace)
        if tags_changed and identity.module_id is None:
            self.reconcile_deployments([identity.device_id])
        return change.twin

    def set_desired_all(self, device_id: str, modules_desired: dict[str, dict[str, Any]]) -> None:
        """A deployment sets the desired properties of the device's modules (creating a twin if the
        module identity does not exist yet, so the edge agent finds them when it creates the module).

        All or nothing: every module's new desired properties are validated (and the changes
        computed) before any twin changes, so a refused deployment leaves every twin as it was."""
        changes: list[tuple[Identity, twins.DesiredChange]] = []
        for module_id, desired in modules_desired.items():
            identity = Identity(device_id, module_id)
            twin = self.twins.get(identity) or Twin(device_id=identity.device_id, module_id=identity.module_id)
            changes.append((identity, twins.replace_desired(twin, desired)))  # raises before anything changed
        for identity, change in changes:
            self._desired_changed(identity, change)

    def device_twins_json(self) -> list[dict[str, Any]]:
        return [self.twin_json(r.identity) for r in self.devices()]

    def module_twins_json(self) -> list[dict[str, Any]]:
        return [self.twin_json(i) for i in self.identities if i.module_id is not None]

    # -- queries ---------------------------------------------------------------------------

    def query(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        query = parse_twin_query(text)
        if query.source == "devices.modules":
            return run_twin_query(query, [], self.module_twins_json())
        return run_twin_query(query, self.device_twins_json(), [])

    # -- configurations and deployments ----------------------------------------------------

    def put_configuration(self, config_id: str, body: Any, if_match: str | None) -> tuple[dict[str, Any], bool]:
        check_id(config_id, "configuration id")
        if not isinstance(body, dict):
            raise HubError("configuration must be a JSON object", code=errors.CONFIGURATION_INVALID)
        existing = self.configurations.get(config_id)
        if existing is not None:
            _check_etag(if_match, existing["etag"])
        content = body.get("content") or {}
        if not isinstance(content, dict):
            raise HubError("content must be an object", code=errors.CONFIGURATION_INVALID)
        if content.get("modulesContent") is not None:
            deployments.validate_modules_content(content["modulesContent"])
            _check_modules_desired(content["modulesContent"])  # refused here, not when devices apply it
        deployments.parse_target_condition(body.get("targetCondition", ""))
        priority = body.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
            raise HubError("priority must be a non-negative integer", code=errors.CONFIGURATION_INVALID)
        metrics = body.get("metrics") or {}
        queries = (metrics.get("queries") or {}) if isinstance(metrics, dict) else {}
        if not isinstance(queries, dict):
            raise HubError("metrics.queries must be an object", code=errors.CONFIGURATION_INVALID)
        for text in queries.values():
            parse_twin_query(_expand_metric(text, config_id))
        now = now_iso()
        if existing is not None:
            # IoT Hub: only labels and metrics of a configuration can change after creation
            doc = {**existing, "labels": body.get("labels") or {}, "metrics": {"queries": queries, "results": {}},
                   "lastUpdatedTimeUtc": now, "etag": _next_etag(existing["etag"])}
        else:
            doc = {"id": config_id, "schemaVersion": body.get("schemaVersion") or "1.0",
                   "labels": body.get("labels") or {}, "content": content,
                   "targetCondition": body.get("targetCondition", ""), "createdTimeUtc": now,
                   "lastUpdatedTimeUtc": now, "priority": priority,
                   "systemMetrics": {"queries": {}, "results": {}},
                   "metrics": {"queries": queries, "results": {}}, "etag": _next_etag(None),
                   "contentType": "assignment"}
        self.configurations[config_id] = doc
        self.store.put_configuration(config_id, doc)
        if existing is None:
            self.reconcile_deployments(None)
        return self.configuration_json(config_id), existing is None

    def configuration_json(self, config_id: str) -> dict[str, Any]:
        """The configuration with its metrics evaluated now: ``systemMetrics`` (IoT Hub's four queries
        for edge deployments) and the custom ``metrics``; each result is the number of rows its query
        returns, the same query ``az iot edge deployment show-metric`` runs."""
        config = self.configurations.get(config_id)
        if config is None:
            raise _not_found("configuration")
        doc = copy.deepcopy(config)
        snapshot: dict[str, list[dict[str, Any]]] = {}  # one twin snapshot for every query of this read
        queries = system_metric_queries(config) if deployments.is_edge_configuration(config) else {}
        doc["systemMetrics"] = {"queries": queries,
                                "results": {name: self._count(text, snapshot) for name, text in queries.items()}}
        custom = (config.get("metrics") or {}).get("queries", {})
        doc["metrics"] = {"queries": custom,
                          "results": {name: self._count(_expand_metric(text, config_id), snapshot)
                                      for name, text in custom.items()}}
        return doc

    def _count(self, text: str, snapshot: dict[str, list[dict[str, Any]]]) -> int:
        query = parse_twin_query(text)
        if query.source not in snapshot:
            snapshot[query.source] = (self.module_twins_json() if query.source == "devices.modules"
                                      else self.device_twins_json())
        rows = snapshot[query.source]
        _kind, items = (run_twin_query(query, [], rows) if query.source == "devices.modules"
                        else run_twin_query(query, rows, []))
        return len(items)

    def delete_configuration(self, config_id: str, if_match: str | None) -> None:
        config = self.configurations.get(config_id)
        if config is None:
            raise _not_found("configuration")
        _check_etag(if_match, config["etag"])
        del self.configurations[config_id]
        self.store.delete_configuration(config_id)
        self.reconcile_deployments(None)

    def apply_configuration_content(self, device_id: str, body: Any) -> None:
        record = self.identity(Identity(device_id))
        if not record.iot_edge:
            raise HubError("device is not an IoT Edge device", code=errors.BAD_REQUEST)
        if not isinstance(body, dict):
            raise HubError("content must be a JSON object", code=errors.CONFIGURATION_INVALID)
        modules_content = body.get("modulesContent")
        deployments.validate_modules_content(modules_content, require_base=True)
        assert isinstance(modules_content, dict)
        desired: dict[str, dict[str, Any]] = {}
        deployments.apply_modules_content(desired, modules_content)
        self.set_desired_all(device_id, desired)  # validates every module first: a 400 changes nothing
        # the device no longer runs what an automatic deployment gave it: the next evaluation
        # (configuration or tag change) applies the winning deployment again
        if self.device_configurations.pop(device_id, None) is not None:
            self.store.put_deployment(device_id, None)

    def reconcile_deployments(self, device_ids: list[str] | None) -> None:
        """Apply automatic deployments to the given edge devices (None: all of them)."""
        configs = sorted(self.configurations.values(), key=lambda c: c["id"])
        for record in self.devices():
            if not record.iot_edge or (device_ids is not None and record.device_id not in device_ids):
                continue
            device_twin = self.twin_json(record.identity)
            plan = deployments.plan_device(device_twin, configs)
            before = self.device_configurations.get(record.device_id)
            if plan is None:
                if before:
                    self.device_configurations.pop(record.device_id, None)
                    self.store.put_deployment(record.device_id, None)
                continue
            doc = {"applied": list(plan.applied), "targeted": list(plan.targeted), "updated": time.time()}
            # a configuration's content is immutable in IoT Hub, so the same applied list means
            # the same desired properties: re-applying would only undo later manual twin edits.
            # Nothing applied (layers without a base): the twins stay as they are.
            if plan.applied and (before is None or before.get("applied") != doc["applied"]):
                self.set_desired_all(record.device_id, plan.modules_desired)  # first: a refusal records nothing
            self.device_configurations[record.device_id] = doc
            self.store.put_deployment(record.device_id, doc)


def _check_modules_desired(modules_content: dict[str, Any]) -> None:
    """Each module's desired properties as this content alone would set them must be valid twin
    content (no nulls, allowed keys, size): the same checks applying it to a twin makes."""
    desired: dict[str, dict[str, Any]] = {}
    deployments.apply_modules_content(desired, modules_content)
    for module_id, module_desired in desired.items():
        twins.replace_desired(Twin(device_id="-", module_id=module_id), module_desired)


def system_metric_queries(config: dict[str, Any]) -> dict[str, str]:
    """IoT Hub's system metric queries of an edge deployment (as the service stores them; the same
    texts the azure-iot CLI's state export sample and IoT Edge's own deployment tests use)."""
    cid = config["id"]
    condition = str(config.get("targetCondition") or "").strip()
    targeted = "select deviceId from devices where capabilities.iotEdge = true"
    if condition == "":
        targeted += " and false"  # an empty condition targets no device
    elif condition != "*":
        targeted += f" and ({condition})"
    applied = ("select deviceId from devices.modules where moduleId = '$edgeAgent' "  # noqa: S608 - a checked id
               f"and configurations.[[{cid}]].status = 'Applied'")
    same_version = " and properties.desired.$version = properties.reported.lastDesiredVersion"
    return {"targetedCount": targeted, "appliedCount": applied,
            "reportedSuccessfulCount": applied + same_version + " and properties.reported.lastDesiredStatus.code = 200",
            "reportedFailedCount": applied + same_version + " and properties.reported.lastDesiredStatus.code != 200"}


def _expand_metric(text: Any, config_id: str) -> str:
    if not isinstance(text, str):
        raise HubError("a metric query must be a string", code=errors.CONFIGURATION_INVALID)
    return text


def _next_etag(previous: str | None) -> str:
    number = int(base64.b64decode(previous).decode()) + 1 if previous else 1
    return base64.b64encode(str(number).encode()).decode()
