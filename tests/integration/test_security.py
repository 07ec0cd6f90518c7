"""Authentication (HMAC challenge-response), per-user tokens, TLS, and connection limits."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client.client import Client
from client.errors import ConnectError
from protocol.auth import key_id
from protocol.errors import ErrorCode, RemoteError
from protocol.framing import FrameReader, encode_frame
from scheduler.errors import SchedulerError
from tests.conftest import SchedulerFactory

SECRET = "s3cret-for-the-tests-only"
ANN = "ann-token-0123456789"


def tokens_file(tmp_path: Path) -> str:
    path = tmp_path / "tokens"
    path.write_text(f"# shared by the team\n{SECRET}\n{ANN} ann\n")
    return str(path)


async def raw_exchange(port: int, *messages: dict[str, object]) -> list[object]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    frames = FrameReader(reader)
    replies: list[object] = []
    try:
        for message in messages:
            writer.write(encode_frame(message))
            await writer.drain()
            replies.append(await asyncio.wait_for(frames.read(), 10))
        replies.append(await asyncio.wait_for(frames.read(), 10))  # None once closed
    finally:
        writer.close()
    return replies


async def test_token_round_trip_and_secret_never_sent(
    start_scheduler: SchedulerFactory, tmp_path: Path
) -> None:
    sched = await start_scheduler(local_workers=1, token_file=tokens_file(tmp_path))
    async with Client("127.0.0.1", sched.port, token=SECRET) as client:
        [result] = await client.run([{"fn": "add", "args": [1, 2]}])
        assert result.value == 3
    # The hello carries only the key id; a replayed or guessed answer is refused.
    hello, failed, closed = await raw_exchange(
        sched.port,
        {"op": "hello", "rid": 1, "version": 1, "key": key_id(SECRET)},
        {"op": "auth", "rid": 2, "mac": "00" * 32},
    )
    assert isinstance(hello, dict) and len(hello["challenge"]) == 32
    assert isinstance(failed, dict) and failed["code"] == "auth"
    assert closed is None


async def test_unauthenticated_requests_are_refused_and_closed(
    start_scheduler: SchedulerFactory, tmp_path: Path
) -> None:
    sched = await start_scheduler(local_workers=0, token_file=tokens_file(tmp_path))
    reply, closed = await raw_exchange(
        sched.port, {"op": "submit", "rid": 1, "tasks": [{"cmd": "id"}]}
    )
    assert isinstance(reply, dict) and reply["code"] == "auth" and closed is None
    assert sched.table.submitted_total == 0
    with pytest.raises(RemoteError, match="requires a token"):
        await Client.connect("127.0.0.1", sched.port, reconnect=False)
    with pytest.raises(RemoteError) as info:
        await Client.connect("127.0.0.1", sched.port, token="wrong-token-0123456789")
    assert info.value.code is ErrorCode.AUTH


async def test_a_user_token_cannot_submit_as_another(
    start_scheduler: SchedulerFactory, tmp_path: Path
) -> None:
    sched = await start_scheduler(local_workers=1, token_file=tokens_file(tmp_path))
    async with Client("127.0.0.1", sched.port, token=ANN, reconnect=False) as client:
        sub = await client.submit([{"cmd": "true"}])  # no user given: becomes ann
        assert (await client.status(sub.ids[0]))["task"]["user"] == "ann"
        with pytest.raises(RemoteError) as info:
            await client.submit([{"cmd": "true", "user": "bob"}])
        assert info.value.code is ErrorCode.AUTH and "'bob'" in str(info.value)


async def test_refuses_open_network_without_a_token(start_scheduler: SchedulerFactory) -> None:
    with pytest.raises(SchedulerError, match="without a token"):
        await start_scheduler(local_workers=0, host="0.0.0.0")
    sched = await start_scheduler(local_workers=0, host="0.0.0.0", insecure=True)
    assert sched.port > 0


def make_cert(tmp_path: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "taskmill test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


async def test_tls_with_a_self_signed_certificate(
    start_scheduler: SchedulerFactory, tmp_path: Path
) -> None:
    cert, key = make_cert(tmp_path)
    sched = await start_scheduler(local_workers=1, tls_cert=cert, tls_key=key)
    async with Client("127.0.0.1", sched.port, tls_ca=cert) as client:
        [result] = await client.run([{"fn": "add", "args": [2, 2]}])
        assert result.value == 4
    # Without trusting the certificate, the handshake fails: no plaintext fallback.
    with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        await Client.connect("127.0.0.1", sched.port, tls=True, reconnect=False)


async def test_connection_limit(start_scheduler: SchedulerFactory) -> None:
    sched = await start_scheduler(local_workers=0, max_connections=2)
    async with Client("127.0.0.1", sched.port), Client("127.0.0.1", sched.port):
        reader, writer = await asyncio.open_connection("127.0.0.1", sched.port)
        frames = FrameReader(reader)
        reply = await asyncio.wait_for(frames.read(), 10)
        assert reply["code"] == "quota" and "limit 2" in reply["message"]
        assert await asyncio.wait_for(frames.read(), 10) is None
        writer.close()


async def test_slow_frame_times_out(start_scheduler: SchedulerFactory) -> None:
    sched = await start_scheduler(local_workers=0, read_timeout_s=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", sched.port)
    writer.write(struct.pack(">I", 100) + b"\x81")  # a frame begun, never finished
    await writer.drain()
    frames = FrameReader(reader)
    reply = await asyncio.wait_for(frames.read(), 10)
    assert reply["code"] == "bad_frame" and "not finished within" in reply["message"]
    assert await asyncio.wait_for(frames.read(), 10) is None
    writer.close()
    # An idle connection between frames is fine: clients wait for results.
    async with Client("127.0.0.1", sched.port) as client:
        await asyncio.sleep(0.5)  # idle longer than the read timeout on purpose
        assert await client.ping() > 0
