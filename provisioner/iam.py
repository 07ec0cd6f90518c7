"""The AWS operations each taskmill component calls: the source of truth for IAM.

Kept by hand, next to the code, on purpose: ``tests/provisioner/test_iam.py`` scans
each component's sources for calls on SQS, DynamoDB and EC2 clients and fails when
this table and the code differ (a new call must be added here), then checks that
``deploy/iam/<role>.json`` and the CloudFormation template's policy for that role
allow every action. Operation names are the client methods' (snake_case).

A scheduler run with ``--autoscale`` embeds the autoscaler: give it the
``provisioner`` policy as well (the CloudFormation scheduler role has both).
"""

from __future__ import annotations

# role -> service -> operations (client method names, as called in the sources)
OPERATIONS: dict[str, dict[str, frozenset[str]]] = {
    "scheduler": {
        "sqs": frozenset(
            {
                "get_queue_url",
                "create_queue",  # its own reply queue
                "delete_queue",  # ... when it was created for this run only
                "send_message_batch",
                "receive_message",
                "delete_message_batch",
            }
        ),
        "dynamodb": frozenset({"describe_table", "update_item", "scan"}),
    },
    "worker": {
        "sqs": frozenset(
            {
                "get_queue_url",
                "receive_message",
                "change_message_visibility_batch",
                "delete_message",
                "delete_message_batch",
                "send_message",  # to the dead-letter queue
                "send_message_batch",  # results, to the scheduler's reply queue
            }
        ),
        "dynamodb": frozenset({"describe_table", "get_item", "update_item", "put_item"}),
    },
    "provisioner": {
        "sqs": frozenset({"get_queue_url", "get_queue_attributes"}),
        "dynamodb": frozenset({"describe_table", "scan", "update_item"}),
        "ec2": frozenset({"run_instances", "describe_instances", "terminate_instances"}),
    },
    # `taskmill init-aws` (provisioner/resources.py), run once by an operator; the
    # CloudFormation template is the alternative that needs none of it at run time.
    "init-aws": {
        "sqs": frozenset({"create_queue", "get_queue_attributes"}),
        "dynamodb": frozenset({"list_tables", "create_table", "describe_table"}),
    },
}

# Source files of each role, relative to the repository root.
SOURCES: dict[str, tuple[str, ...]] = {
    "scheduler": ("scheduler",),
    "worker": ("worker",),
    "provisioner": (
        "provisioner/autoscaler.py",
        "provisioner/ec2.py",
    ),
    "init-aws": ("provisioner/resources.py",),
}

# Actions a request needs besides its own: RunInstances with TagSpecifications needs
# ec2:CreateTags, and with an instance profile iam:PassRole on the worker role.
EXTRA_ACTIONS: dict[str, frozenset[str]] = {
    "provisioner": frozenset({"ec2:CreateTags", "iam:PassRole"}),
}

# SQS authorizes a batch request with the action of its single-message form.
BATCH_ACTIONS: dict[str, str] = {
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
}

# The only actions that may be granted on Resource "*": they have no resource-level
# permissions in IAM.
UNSCOPED_ACTIONS = frozenset({"ec2:DescribeInstances", "dynamodb:ListTables"})
