"""Auth through real gRPC: tokens map to tenants (hashed at rest, from the environment or a re-read file), a
tenant sees only its own records (another's id is NOT_FOUND), the worker token is separate, TLS when
configured, and the open mode when nothing is configured."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest
from kernelscope.v1 import (
    datasets_pb2,
    jobs_pb2,
    kernelscope_pb2_grpc,
    models_pb2,
    tasks_pb2,
    worker_pb2,
    worker_pb2_grpc,
)

from service import auth
from tests.service.helpers import (
    clips,
    dataset_messages,
    model_messages,
    npz_bytes,
    onnx_bytes,
    rpc_error,
    stored_files,
    with_token,
)

CODE = grpc.StatusCode
ALICE, BOB = "alice-token-0123", "bob-token-4567"


def stub_for(server: Any, token: str | None) -> Any:
    channel = server.channel()
    return kernelscope_pb2_grpc.KernelScopeStub(with_token(channel, token) if token else channel)


def tconv_job(stub: Any, model_id: str, request_id: str = "") -> jobs_pb2.Job:
    request = jobs_pb2.CreateJobRequest(model_id=model_id, tasks=[tasks_pb2.Task(name="tconv_stats")], request_id=request_id)
    return stub.CreateJob(request, timeout=10)


@pytest.fixture
def two_tenants(start_fake_server) -> Any:
    return start_fake_server(tokens=f"alice={ALICE}, bob={BOB}")


# --- tokens ------------------------------------------------------------------------------------


def test_calls_without_a_known_token_are_unauthenticated_and_read_nothing(two_tenants) -> None:
    for token, reason in ((None, "TOKEN_REQUIRED"), ("not-a-token", "BAD_TOKEN"), (two_tenants.config.worker_token, "BAD_TOKEN")):
        stub = stub_for(two_tenants, token)
        with rpc_error(CODE.UNAUTHENTICATED, reason):
            stub.ListModels(models_pb2.ListModelsRequest(), timeout=5)
        with rpc_error(CODE.UNAUTHENTICATED, reason):  # refused before a byte of the upload is stored
            stub.UploadModel(model_messages(onnx_bytes(padding=300_000)), timeout=10)
    wrong_scheme = two_tenants.stub()
    with rpc_error(CODE.UNAUTHENTICATED, "TOKEN_REQUIRED"):
        wrong_scheme.ListModels(models_pb2.ListModelsRequest(), metadata=(("authorization", f"Basic {ALICE}"),), timeout=5)
    assert stored_files(two_tenants.config.data_dir) == {"blobs": [], "tmp": []}


def test_the_worker_api_takes_only_the_worker_token(two_tenants) -> None:
    alice = stub_for(two_tenants, ALICE)
    model = alice.UploadModel(model_messages(onnx_bytes()), timeout=10)
    worker = worker_pb2_grpc.WorkerStub(two_tenants.channel())
    fetch = worker_pb2.FetchBlobRequest(sha256=model.sha256)
    with rpc_error(CODE.PERMISSION_DENIED, "WORKER_ONLY"):
        list(worker.FetchBlob(fetch, metadata=(("authorization", f"Bearer {ALICE}"),), timeout=5))
    with rpc_error(CODE.UNAUTHENTICATED, "BAD_WORKER_TOKEN"):
        list(worker.FetchBlob(fetch, metadata=(("authorization", "Bearer nope"),), timeout=5))
    assert b"".join(c.data for c in worker.FetchBlob(fetch, metadata=two_tenants.worker_metadata, timeout=5)) == onnx_bytes()


def test_a_tenant_sees_only_its_own_models_datasets_jobs_and_artifacts(two_tenants, run_jobs) -> None:
    alice, bob = stub_for(two_tenants, ALICE), stub_for(two_tenants, BOB)
    data = onnx_bytes(padding=1234)
    model = alice.UploadModel(model_messages(data), timeout=10)
    dataset = alice.UploadDataset(dataset_messages(npz_bytes(**clips())), timeout=10)
    job = tconv_job(alice, model.id, request_id="same-request")
    run_jobs()
    assert alice.WaitJob(jobs_pb2.WaitJobRequest(job_id=job.id), timeout=10).state == jobs_pb2.SUCCEEDED
    artifact = jobs_pb2.ReadArtifactRequest(job_id=job.id, name="tconv_stats/summary.json")
    assert b"".join(c.data for c in alice.ReadArtifact(artifact, timeout=5))

    # Bob: every one of Alice's ids is simply not there.
    not_found = [
        ("MODEL_NOT_FOUND", lambda: bob.GetModel(models_pb2.GetModelRequest(model_id=model.id), timeout=5)),
        ("MODEL_NOT_FOUND", lambda: bob.DescribeModel(models_pb2.DescribeModelRequest(model_id=model.id), timeout=5)),
        ("MODEL_NOT_FOUND", lambda: bob.DeleteModel(models_pb2.DeleteModelRequest(model_id=model.id), timeout=5)),
        ("MODEL_NOT_FOUND", lambda: tconv_job(bob, model.id)),
        ("DATASET_NOT_FOUND", lambda: bob.GetDataset(datasets_pb2.GetDatasetRequest(dataset_id=dataset.id), timeout=5)),
        ("DATASET_NOT_FOUND", lambda: bob.DeleteDataset(datasets_pb2.DeleteDatasetRequest(dataset_id=dataset.id), timeout=5)),
        ("JOB_NOT_FOUND", lambda: bob.GetJob(jobs_pb2.GetJobRequest(job_id=job.id), timeout=5)),
        ("JOB_NOT_FOUND", lambda: bob.WaitJob(jobs_pb2.WaitJobRequest(job_id=job.id), timeout=5)),
        ("JOB_NOT_FOUND", lambda: list(bob.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.id), timeout=5))),
        ("JOB_NOT_FOUND", lambda: bob.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id), timeout=5)),
        ("JOB_NOT_FOUND", lambda: bob.DeleteJob(jobs_pb2.DeleteJobRequest(job_id=job.id), timeout=5)),
        ("JOB_NOT_FOUND", lambda: list(bob.ReadArtifact(artifact, timeout=5))),
    ]
    for reason, call in not_found:
        with rpc_error(CODE.NOT_FOUND, reason):
            call()
    assert not bob.ListModels(models_pb2.ListModelsRequest(), timeout=5).models
    assert not bob.ListDatasets(datasets_pb2.ListDatasetsRequest(), timeout=5).datasets
    assert not bob.ListJobs(jobs_pb2.ListJobsRequest(), timeout=5).jobs

    # The same bytes and header and the same request_id make Bob his own model and job (the same id, his record);
    # deleting Alice's keeps Bob's record and blob.
    bobs_model = bob.UploadModel(model_messages(data), timeout=10)
    assert bobs_model.id == model.id and bobs_model.create_time != model.create_time
    bobs_job = tconv_job(bob, bobs_model.id, request_id="same-request")
    assert bobs_job.id != job.id
    alice.DeleteModel(models_pb2.DeleteModelRequest(model_id=model.id), timeout=5)
    assert bob.GetModel(models_pb2.GetModelRequest(model_id=model.id), timeout=5) == bobs_model
    assert (two_tenants.config.data_dir / "blobs" / model.sha256[:2] / model.sha256).read_bytes() == data
    assert [j.id for j in alice.ListJobs(jobs_pb2.ListJobsRequest(), timeout=5).jobs] == [job.id]


def test_the_tokens_file_holds_only_hashes_and_is_re_read_when_it_changes(start_server, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(auth, "_FILE_CHECK_SECONDS", 0.0)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# tenant:sha256(token)\nalice:{hashlib.sha256(ALICE.encode()).hexdigest()}\n\n")
    server = start_server(tokens_file=str(tokens))
    alice, bob = stub_for(server, ALICE), stub_for(server, BOB)
    alice.ListModels(models_pb2.ListModelsRequest(), timeout=5)
    with rpc_error(CODE.UNAUTHENTICATED, "BAD_TOKEN"):
        bob.ListModels(models_pb2.ListModelsRequest(), timeout=5)

    assert auth.main(["bob", BOB]) == 0  # prints the line to add
    tokens.write_text(f"bob:{auth.hash_token(BOB)}  # alice revoked\n")
    bob.ListModels(models_pb2.ListModelsRequest(), timeout=5)
    with rpc_error(CODE.UNAUTHENTICATED, "BAD_TOKEN"):
        alice.ListModels(models_pb2.ListModelsRequest(), timeout=5)

    tokens.write_text("bob:not-a-hash\n")  # a broken edit keeps the last good table
    bob.ListModels(models_pb2.ListModelsRequest(), timeout=5)


@pytest.mark.parametrize(
    "text, words",
    [
        ("alice:1234\n", "line 1: expected '<tenant>:<sha256"),
        ("\n# ok\nbad tenant!:" + "0" * 64 + "\n", "line 3: tenant 'bad tenant!'"),
        (f"alice:{'a' * 64}\nbob:{'a' * 64}\n", "listed for tenants 'alice' and 'bob'"),
        (f"blob:{'a' * 64}\n", "tenant 'blob'"),
    ],
)
def test_a_bad_tokens_file_stops_the_server_naming_the_line(start_server, tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        start_server(tokens_file=str(path))


def test_tokens_from_the_environment_are_parsed_and_checked() -> None:
    table = auth.parse_tokens_env(" a = t1 ,b=t2,, a=t3 ")
    assert table == {auth.hash_token("t1"): "a", auth.hash_token("t2"): "b", auth.hash_token("t3"): "a"}
    with pytest.raises(ValueError, match="entry 1: expected '<tenant>=<token>'"):
        auth.parse_tokens_env("just-a-token")
    with pytest.raises(ValueError, match="worker token must differ"):
        auth.Authenticator(tokens="a=same", worker_token="same")


def test_without_tokens_the_service_is_open_as_tenant_default_and_says_so(start_server, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="service.server"):
        server = start_server()
    assert "no API tokens configured: every caller is tenant 'default'" in caplog.text
    anyone, with_some_token = stub_for(server, None), stub_for(server, "whatever")
    model = anyone.UploadModel(model_messages(onnx_bytes()), timeout=10)
    assert with_some_token.GetModel(models_pb2.GetModelRequest(model_id=model.id), timeout=5) == model


# --- TLS -----------------------------------------------------------------------------------------


def self_signed(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """A certificate for localhost / 127.0.0.1 and its key, written as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = tmp_path / "server.crt", tmp_path / "server.key"
    cert_path.write_bytes(pem)
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path, pem


def test_tls_serves_clients_that_trust_the_certificate_and_refuses_plaintext(start_server, tmp_path: Path, monkeypatch) -> None:
    import sdk
    from workers import connection

    cert, key, pem = self_signed(tmp_path)
    server = start_server(tls_cert=str(cert), tls_key=str(key), tokens=f"alice={ALICE}")
    client = sdk.Client(f"localhost:{server.port}", token=ALICE, root_certificates=pem, retry_seconds=0)
    data = onnx_bytes(padding=77)
    model = client.upload_model(data, format="onnx", input_spec={"shape": [3, 4, 8, 8]})
    assert client.get_model(model.id).sha256 == hashlib.sha256(data).hexdigest()
    client.close()

    with rpc_error(CODE.UNAVAILABLE):  # plaintext gets no answer from a TLS port
        stub_for(server, ALICE).ListModels(models_pb2.ListModelsRequest(), timeout=5)

    monkeypatch.setenv("KERNELSCOPE_TLS_CA", str(cert))  # and workers reach it over TLS too
    link = connection.ServiceConnection(target=f"localhost:{server.port}", token=server.config.worker_token)
    try:
        link.fetch_blob(model.sha256, tmp_path / "fetched")
    finally:
        link.close()
    assert (tmp_path / "fetched").read_bytes() == data


def test_tls_needs_both_files() -> None:
    from service import Config

    with pytest.raises(ValueError, match="both KERNELSCOPE_TLS_CERT and KERNELSCOPE_TLS_KEY"):
        Config.from_env({"KERNELSCOPE_TLS_CERT": "/x.crt"})
