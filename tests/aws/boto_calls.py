"""boto3 calls through faultline, driven line by line by tests/aws.rs.

Usage: boto_calls.py MOTO_URL FAULTLINE_URL

First makes an IAM user with an access key straight at moto (the server
runs with INITIAL_NO_AUTH_ACTION_COUNT=3, so those are the only unsigned
actions it takes; every later call must carry a valid SigV4 signature),
prints {"ready": true}, then reads one call per line on stdin
("SERVICE OPERATION REGION") and prints one JSON line per call: whether
it succeeded, and for an error what botocore made of it (code, status,
request ids, retries). The client is what an application would use:
AWS_ENDPOINT_URL-style endpoint, standard retry mode, default attempts.
"""

import json
import sys

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError

MOTO, FAULTLINE = sys.argv[1], sys.argv[2]

ADMIN_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
    }
)


def bootstrap():
    """Three unsigned actions at moto itself: a user, its policy, its key."""
    iam = boto3.client(
        "iam",
        endpoint_url=MOTO,
        region_name="us-east-1",
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    iam.create_user(UserName="rehearsal")
    iam.put_user_policy(
        UserName="rehearsal", PolicyName="all", PolicyDocument=ADMIN_POLICY
    )
    key = iam.create_access_key(UserName="rehearsal")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


KEY_ID, SECRET = bootstrap()
CLIENTS = {}


def client(service, region):
    if (service, region) not in CLIENTS:
        CLIENTS[(service, region)] = boto3.client(
            service,
            endpoint_url=FAULTLINE,
            region_name=region,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            config=Config(retries={"mode": "standard"}),
        )
    return CLIENTS[(service, region)]


TABLE = "orders"
BUCKET = "rehearsal-bucket"
KEY = {"id": {"S": "1"}}


def call(service, operation, region):
    c = client(service, region)
    if (service, operation) == ("dynamodb", "create_table"):
        return c.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    if (service, operation) == ("dynamodb", "put_item"):
        return c.put_item(TableName=TABLE, Item={**KEY, "total": {"N": "42"}})
    if (service, operation) == ("dynamodb", "get_item"):
        return c.get_item(TableName=TABLE, Key=KEY)
    if (service, operation) == ("s3", "create_bucket"):
        return c.create_bucket(Bucket=BUCKET)
    if (service, operation) == ("s3", "put_object"):
        return c.put_object(Bucket=BUCKET, Key="a.txt", Body=b"hello")
    if (service, operation) == ("s3", "list_objects_v2"):
        return c.list_objects_v2(Bucket=BUCKET)
    if (service, operation) == ("sqs", "create_queue"):
        return c.create_queue(QueueName="jobs")
    if (service, operation) == ("sqs", "list_queues"):
        return c.list_queues()
    if (service, operation) == ("sts", "get_caller_identity"):
        return c.get_caller_identity()
    if (service, operation) == ("lambda", "list_functions"):
        return c.list_functions()
    if (service, operation) == ("lambda", "get_function"):
        return c.get_function(FunctionName="nope")
    if (service, operation) == ("lambda", "list_event_source_mappings"):
        return c.list_event_source_mappings()
    if (service, operation) == ("lambda", "get_account_settings"):
        return c.get_account_settings()
    if (service, operation) == ("ec2", "describe_regions"):
        return c.describe_regions()
    raise ValueError(f"unknown call {service} {operation}")


def main():
    print(json.dumps({"ready": True, "botocore": botocore.__version__}), flush=True)
    for line in sys.stdin:
        service, operation, region = line.split()
        try:
            response = call(service, operation, region)
            meta = response["ResponseMetadata"]
            out = {"ok": True, "status": meta["HTTPStatusCode"]}
        except ClientError as e:
            meta = e.response.get("ResponseMetadata", {})
            error = e.response.get("Error", {})
            out = {
                "ok": False,
                "code": error.get("Code"),
                "message": error.get("Message"),
                "type": error.get("Type"),
                "status": meta.get("HTTPStatusCode"),
                "request_id": meta.get("RequestId"),
                "host_id": meta.get("HostId"),
                "retries": meta.get("RetryAttempts"),
                "exception": type(e).__name__,
            }
        print(json.dumps(out), flush=True)


main()
