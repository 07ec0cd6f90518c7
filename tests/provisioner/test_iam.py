"""Every AWS operation the code calls is in provisioner/iam.py, and the IAM policies in
deploy/iam/ and the CloudFormation template grant exactly those actions, no more."""

from __future__ import annotations

import ast
import functools
import json
from pathlib import Path
from typing import Any

import botocore.session
import pytest
import yaml
from botocore import xform_name

from provisioner.iam import BATCH_ACTIONS, EXTRA_ACTIONS, OPERATIONS, SOURCES, UNSCOPED_ACTIONS

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("protocol", "scheduler", "worker", "client", "provisioner")
TEMPLATE = REPO / "deploy" / "cloudformation" / "taskmill.yaml"
CFN_POLICY = {
    "scheduler": "SchedulerPolicy",
    "worker": "WorkerPolicy",
    "provisioner": "ProvisionerPolicy",
}
IAM_PREFIX = {"sqs": "sqs", "dynamodb": "dynamodb", "ec2": "ec2"}


@functools.cache
def operations(service: str) -> dict[str, str]:
    """snake_case method -> API operation name, from botocore's model (no request)."""
    model = botocore.session.get_session().get_service_model(service)
    return {xform_name(op): op for op in model.operation_names}


@functools.cache
def waiter_operation(service: str, waiter: str) -> str:
    model = botocore.session.get_session().get_waiter_model(service)
    names = {xform_name(n): n for n in model.waiter_names}
    return str(model.get_waiter(names[waiter]).operation)


def service_of(receiver: str) -> str | None:
    """The AWS service of a client, by its variable name (``self._sqs``, ``ddb``, ``ec2``)."""
    name = receiver.rsplit(".", 1)[-1].lower()
    if "sqs" in name:
        return "sqs"
    if "ddb" in name or "dynamo" in name:
        return "dynamodb"
    if "ec2" in name:
        return "ec2"
    return None


def calls_in(path: Path) -> set[tuple[str, str]]:
    """(service, operation) pairs called in one source file."""
    found: set[tuple[str, str]] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        service = service_of(ast.unparse(node.func.value))
        if service is None:
            continue
        method = node.func.attr
        arg = node.args[0] if node.args else None
        name = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None
        if method == "get_paginator" and name:
            found.add((service, name))
        elif method == "get_waiter" and name:
            found.add((service, xform_name(waiter_operation(service, name))))
        elif method in operations(service):
            found.add((service, method))
    return found


def role_files(role: str) -> list[Path]:
    files: list[Path] = []
    for entry in SOURCES[role]:
        path = REPO / entry
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return files


def table(role: str) -> set[tuple[str, str]]:
    return {(service, op) for service, ops in OPERATIONS[role].items() for op in ops}


def required_actions(role: str) -> set[str]:
    actions = {f"{IAM_PREFIX[s]}:{operations(s)[op]}" for s, op in table(role)}
    return {BATCH_ACTIONS.get(a, a) for a in actions} | set(EXTRA_ACTIONS.get(role, ()))


def granted(statements: list[dict[str, Any]]) -> set[str]:
    actions: set[str] = set()
    for st in statements:
        assert st["Effect"] == "Allow"
        action = st["Action"]
        actions.update([action] if isinstance(action, str) else action)
    return actions


@pytest.mark.parametrize("role", sorted(OPERATIONS))
def test_the_operations_table_matches_the_sources(role: str) -> None:
    called: set[tuple[str, str]] = set()
    for path in role_files(role):
        called |= calls_in(path)
    missing = sorted(called - table(role))
    stale = sorted(table(role) - called)
    assert not missing, f"{role} calls {missing}: add them to provisioner/iam.py and the policies"
    assert not stale, f"provisioner/iam.py lists {stale} for {role}, which no source calls"


def test_every_file_that_calls_aws_belongs_to_a_role() -> None:
    assigned = {p for role in SOURCES for p in role_files(role)}
    unassigned = [
        str(path.relative_to(REPO))
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        if path not in assigned and calls_in(path)
    ]
    assert unassigned == [], "add these files to provisioner/iam.py SOURCES"


def test_the_scanner_sees_each_kind_of_call(tmp_path: Path) -> None:
    src = tmp_path / "sample.py"
    src.write_text(
        "async def f(self, ddb, sqs_client):\n"
        "    await self._sqs.send_message_batch(QueueUrl='q', Entries=[])\n"
        "    ddb.get_paginator('scan')\n"
        "    ddb.get_waiter('table_exists')\n"
        "    await self.ec2.run_instances()\n"
        "    self.sqs_url.startswith('x')\n"  # not an operation
    )
    assert calls_in(src) == {
        ("sqs", "send_message_batch"),
        ("dynamodb", "scan"),
        ("dynamodb", "describe_table"),
        ("ec2", "run_instances"),
    }


@pytest.mark.parametrize("role", sorted(OPERATIONS))
def test_the_iam_policy_grants_exactly_what_the_role_calls(role: str) -> None:
    policy = json.loads((REPO / "deploy" / "iam" / f"{role}.json").read_text())
    assert policy["Version"] == "2012-10-17"
    statements = policy["Statement"]
    assert granted(statements) == required_actions(role)
    for st in statements:
        actions = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
        assert not any(a == "*" or a.endswith(":*") for a in actions), st
        resources = [st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"]
        if "*" in resources:
            assert set(actions) <= UNSCOPED_ACTIONS, f"{st['Sid']}: Resource * for {actions}"


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Sub, !GetAtt, ...) kept as plain maps."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node)
    else:
        value = loader.construct_mapping(node)  # type: ignore[arg-type]
    return {suffix: value}


_CfnLoader.add_multi_constructor("!", _tag)


def test_cloudformation_policies_grant_the_same_actions() -> None:
    template = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    resources = template["Resources"]
    for role, logical in CFN_POLICY.items():
        statements = resources[logical]["Properties"]["PolicyDocument"]["Statement"]
        assert granted(statements) == required_actions(role), role
    attached = resources["SchedulerRole"]["Properties"]["ManagedPolicyArns"]
    assert {"Ref": "SchedulerPolicy"} in attached and {"Ref": "ProvisionerPolicy"} in attached
    queue = resources["RequestQueue"]["Properties"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"GetAtt": "DeadLetterQueue.Arn"}
    lt = resources["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert lt["InstanceInitiatedShutdownBehavior"] == "terminate"
