"""Real servers for the shared-registry tests, started on free loopback ports and stopped after.

* PostgreSQL: Debian's `postgresql` package (`initdb` + `pg_ctl`), run as the `postgres` user
  when the tests run as root, in a temporary data directory, listening on 127.0.0.1 only.
* S3: moto's server mode, a separate process speaking the S3 HTTP protocol. It is an emulator;
  sola's code path (s3fs over aiobotocore) is the one used against real S3.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "sola-test", "AWS_SECRET_ACCESS_KEY": "sola-test-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}")) or ([shutil.which(tool)] if shutil.which(tool) else [])
    if not found:
        raise RuntimeError(f"PostgreSQL's {tool} is not installed: run `make setup` (it installs Debian's postgresql)")
    return found[-1]


@dataclass
class PostgresServer:
    port: int
    directory: Path
    database: str = "sola_test"

    def url(self, schema: str | None = None) -> str:
        schema = schema or f"t_{uuid.uuid4().hex[:16]}"
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}?schema={schema}"


def _as_postgres(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Postgres refuses to run as root: as root, run the tool as the `postgres` user."""
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    return subprocess.run(command, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def start_postgres() -> PostgresServer:
    directory = Path(tempfile.mkdtemp(prefix="sola-pg-"))
    data = directory / "data"
    data.mkdir()
    if os.geteuid() == 0:
        os.chmod(directory, 0o755)
        account = pwd.getpwnam("postgres")
        os.chown(data, account.pw_uid, account.pw_gid)
    port = free_port()
    _as_postgres([postgres_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c max_connections=200"
    _as_postgres([postgres_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(data / "server.log"), "-w", "-t", "60", "start"])
    _as_postgres([postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "sola_test"])
    return PostgresServer(port, directory)


def stop_postgres(server: PostgresServer) -> None:
    try:
        _as_postgres([postgres_bin("pg_ctl"), "-D", str(server.directory / "data"), "-m", "immediate", "-w", "stop"])
    finally:
        shutil.rmtree(server.directory, ignore_errors=True)


@dataclass
class S3Server:
    port: int
    process: subprocess.Popen

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def new_bucket(self) -> str:
        """A fresh bucket; returns its name."""
        import boto3

        name = f"sola-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, **_boto_credentials()).create_bucket(Bucket=name)
        return name

    def url(self, prefix: str = "registry") -> str:
        return f"s3://{self.new_bucket()}/{prefix}?endpoint_url={self.endpoint}"


def _boto_credentials() -> dict[str, str]:
    return {"aws_access_key_id": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_CREDENTIALS["AWS_DEFAULT_REGION"]}


def start_s3() -> S3Server:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            return S3Server(port, process)
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("moto's S3 server did not start")
            time.sleep(0.2)


def stop_s3(server: S3Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
