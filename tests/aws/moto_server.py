"""One moto server for every test in tests/aws.rs, started once per test run.

Usage: moto_server.py CERT KEY

Serves one set of moto backends on two ports of 127.0.0.1: plain HTTP
(what a reverse listener's upstream reaches) and HTTPS with CERT and KEY
(what a forward listener's destination reaches through `connect_to`, as
it would reach AWS itself). moto runs with INITIAL_NO_AUTH_ACTION_COUNT=3:
this script makes an IAM user with an access key with those three
unsigned actions, and every later call must carry a valid SigV4
signature made with that key.

Prints one JSON line, {"http": PORT, "https": PORT, "key_id": ...,
"secret": ...}, then serves until its stdin closes: the test process
holds the other end, so moto ends with it however it ends.
"""

import json
import logging
import os
import sys
import threading

# Read by moto's settings when they are imported: set first.
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"

import boto3  # noqa: E402
from moto.moto_server.werkzeug_app import (  # noqa: E402
    DomainDispatcherApplication,
    create_backend_app,
)
from werkzeug.serving import make_server  # noqa: E402

CERT, KEY = sys.argv[1], sys.argv[2]

ADMIN_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
    }
)


def serve(ssl_context):
    server = make_server("127.0.0.1", 0, APP, threaded=True, ssl_context=ssl_context)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def bootstrap(url):
    """The three unsigned actions, straight at moto: a user, its policy, its key."""
    iam = boto3.client(
        "iam",
        endpoint_url=url,
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


# One request line per call on stderr would drown the test output.
logging.getLogger("werkzeug").setLevel(logging.ERROR)
APP = DomainDispatcherApplication(create_backend_app)
http_port = serve(None)
https_port = serve((CERT, KEY))
key_id, secret = bootstrap(f"http://127.0.0.1:{http_port}")
print(
    json.dumps(
        {"http": http_port, "https": https_port, "key_id": key_id, "secret": secret}
    ),
    flush=True,
)
# Nobody reads stdout any more, and moto prints there now and then: a full
# pipe would block it. Its prints go to stderr from here on.
os.dup2(2, 1)
sys.stdin.read()
