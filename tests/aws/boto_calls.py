"""boto3 calls through faultline, driven line by line by tests/aws.rs.

Usage: boto_calls.py ENDPOINT

ENDPOINT is faultline's reverse listener (an AWS_ENDPOINT_URL-style
endpoint), or "-" for none: then boto3 calls the real AWS host names, as
an application does, and reaches them through HTTPS_PROXY (faultline's
forward listener) trusting AWS_CA_BUNDLE (faultline's CA). The access key
is in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: the one
tests/aws/moto_server.py made, which moto checks every signature with.

Prints {"ready": true}, then reads one call per line on stdin
("SERVICE OPERATION REGION [endpoint=URL] [secret=WRONG]": another
endpoint for this call, or another secret to sign it with) and prints
one JSON line per call: whether it succeeded, the host it went to, how
long it took, and for an error what botocore made of it (code, status,
request ids, retries, the exception's class). Clients use the standard
retry mode with its default attempts.
"""

import io
import json
import os
import sys
import time
from urllib.parse import urlsplit

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = None if sys.argv[1] == "-" else sys.argv[1]
KEY_ID = os.environ["AWS_ACCESS_KEY_ID"]
SECRET = os.environ["AWS_SECRET_ACCESS_KEY"]
CLIENTS = {}
SENT = {}


def seen(request, **_):
    """Notes the host a call went to (the last attempt's)."""
    SENT["host"] = urlsplit(request.url).netloc


def client(service, region, endpoint, secret):
    key = (service, region, endpoint, secret)
    if key not in CLIENTS:
        CLIENTS[key] = boto3.client(
            service,
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=secret,
            config=Config(retries={"mode": "standard"}),
        )
        CLIENTS[key].meta.events.register("before-send", seen)
    return CLIENTS[key]


TABLE = "orders"
BUCKET = "rehearsal-bucket"
KEY = {"id": {"S": "1"}}
# Bigger than any one read or write buffer on the way (1 MiB and a bit).
BIG = bytes(range(256)) * 4100


def already(error, *codes):
    """Made already: every test of a run shares one moto server."""
    if error.response.get("Error", {}).get("Code") not in codes:
        raise error
    return {"ResponseMetadata": error.response["ResponseMetadata"]}


def call(service, operation, region, endpoint=ENDPOINT, secret=SECRET):
    c = client(service, region, endpoint, secret)
    if (service, operation) == ("dynamodb", "create_table"):
        try:
            return c.create_table(
                TableName=TABLE,
                KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
        except ClientError as e:
            return already(e, "ResourceInUseException")
    if (service, operation) == ("dynamodb", "put_item"):
        return c.put_item(TableName=TABLE, Item={**KEY, "total": {"N": "42"}})
    if (service, operation) == ("dynamodb", "get_item"):
        return c.get_item(TableName=TABLE, Key=KEY)
    if (service, operation) == ("s3", "create_bucket"):
        try:
            return c.create_bucket(Bucket=BUCKET)
        except ClientError as e:
            return already(e, "BucketAlreadyOwnedByYou")
    if (service, operation) == ("s3", "put_object"):
        return c.put_object(Bucket=BUCKET, Key="a.txt", Body=b"hello")
    if (service, operation) == ("s3", "put_object_stream"):
        # A file-like body: botocore sends `Expect: 100-continue` and, with
        # its default checksums, an aws-chunked body with a trailing CRC.
        return c.put_object(Bucket=BUCKET, Key="big.bin", Body=io.BytesIO(BIG))
    if (service, operation) == ("s3", "get_object_stream"):
        response = c.get_object(Bucket=BUCKET, Key="big.bin")
        if response["Body"].read() != BIG:
            raise ValueError("big.bin came back changed")
        return response
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
        service, operation, region, *options = line.split()
        options = dict(option.split("=", 1) for option in options)
        SENT.clear()
        began = time.monotonic()
        try:
            response = call(service, operation, region, **options)
            meta = response["ResponseMetadata"]
            out = {
                "ok": True,
                "status": meta["HTTPStatusCode"],
                "retries": meta.get("RetryAttempts"),
            }
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
        except botocore.exceptions.BotoCoreError as e:
            # No answer to parse (a refused proxy, a certificate not trusted).
            out = {"ok": False, "exception": type(e).__name__, "message": str(e)}
        out["host"] = SENT.get("host")
        out["seconds"] = round(time.monotonic() - began, 3)
        print(json.dumps(out), flush=True)


main()
