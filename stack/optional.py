"""Services started only by name (`stack.py up kafka-secure`, `up s3proxy`, `up zipkin`) and
stopped with everything: a Kafka broker whose clients must log in over TLS, an S3 server for
stored originals that several hosts share (docs/distributed.md, "Secured Kafka" and "Shared
object storage"), and Zipkin, a trace backend with a UI (README, "Operations")."""

import secrets
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from stack import install
from stack.certs import CertificateError, make_broker_certificates
from stack.common import KAFKA_SECURE_PORT, S3_PORT, STATE, ZIPKIN_PORT, StackError, tcp_open
from stack.install import S3PROXY_LIBS, ZIPKIN_LIBS
from stack.kafka import KafkaNode
from stack.services import Service

# Secured Kafka: a node of its own with SASL_SSL and mutual-TLS listeners ---------------

SCRAM_USER = "inferencehub"


@dataclass
class SecureKafkaNode(KafkaNode):
    """A single node whose clients must prove who they are: SASL (SCRAM-SHA-512 or PLAIN)
    over TLS on port, a client certificate over TLS on port + 1. Both listeners also ask
    for a client certificate signed by the stack's authority. Its certificates and the
    SCRAM user's password are made on first start and kept in its folder; client.env there
    holds the settings a client needs (docs/distributed.md, "Secured Kafka")."""

    @property
    def certificates(self) -> Path:
        return self.dir / "certificates"

    def secret(self, name: str) -> str:
        """A password made once and kept in the node's folder, readable by root only."""
        path = self.dir / name
        if not path.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(18) + "\n")
        return path.read_text().strip()

    def server_properties(self) -> str:
        store_password = self.secret("store-password")
        user_password = self.secret("client-password")
        # Java properties: these lines override the plain node's listener lines above.
        return (
            super().server_properties()
            + f"""
listeners=SASL_SSL://127.0.0.1:{self.port},SSL://127.0.0.1:{self.port + 1},\
CONTROLLER://127.0.0.1:{self.controller_port}
advertised.listeners=SASL_SSL://127.0.0.1:{self.port},SSL://127.0.0.1:{self.port + 1}
listener.security.protocol.map=SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SSL
ssl.keystore.type=PKCS12
ssl.keystore.location={self.certificates / "broker.p12"}
ssl.keystore.password={store_password}
ssl.truststore.type=PKCS12
ssl.truststore.location={self.certificates / "truststore.p12"}
ssl.truststore.password={store_password}
ssl.client.auth=required
# A SASL_SSL listener ignores the unprefixed option above.
listener.name.sasl_ssl.ssl.client.auth=required
sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=\
org.apache.kafka.common.security.plain.PlainLoginModule required \
user_{SCRAM_USER}="{user_password}";
"""
        )

    def format_args(self) -> tuple[str, ...]:
        password = self.secret("client-password")
        return ("--add-scram", f"SCRAM-SHA-512=[name={SCRAM_USER},password={password}]")

    def prepare(self) -> None:
        try:
            make_broker_certificates(self.certificates, self.secret("store-password"))
        except CertificateError as error:
            raise StackError(f"{self.name}: making certificates failed: {error}") from None
        (self.dir / "client.env").write_text(self.client_env())
        super().prepare()

    def client_env(self) -> str:
        return f"""\
# Settings of a client of the secured broker; written by stack/optional.py on every start.
KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{self.port}
KAFKA_SECURITY_PROTOCOL=SASL_SSL
KAFKA_SASL_MECHANISM=SCRAM-SHA-512
KAFKA_SASL_USERNAME={SCRAM_USER}
KAFKA_SASL_PASSWORD={self.secret("client-password")}
KAFKA_SSL_CA_LOCATION={self.certificates / "ca.pem"}
KAFKA_SSL_CERTIFICATE_LOCATION={self.certificates / "client.pem"}
KAFKA_SSL_KEY_LOCATION={self.certificates / "client.key"}
"""


KAFKA_SECURE = SecureKafkaNode(
    "kafka-secure",
    1,
    KAFKA_SECURE_PORT,
    KAFKA_SECURE_PORT + 2,
    cluster_id_file=STATE / "kafka-secure-cluster-id",
)


# S3 (s3proxy on its file-system backend) --------------------------------------

S3_DIR = STATE / "s3proxy"
S3_BUCKET = "inferencehub"
S3_USER = "inferencehub"
S3_REGION = "us-east-1"


def s3_secret() -> str:
    """The S3 user's secret key, made once and kept, readable by root only."""
    path = S3_DIR / "secret-key"
    if not path.exists():
        S3_DIR.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24) + "\n")
    return path.read_text().strip()


def s3_prepare() -> None:
    install.install_s3proxy_jars()
    # On the file-system backend a bucket is a folder: this one exists from the start.
    (S3_DIR / "data" / S3_BUCKET).mkdir(parents=True, exist_ok=True)
    (S3_DIR / "s3proxy.conf").write_text(
        f"""\
# Written by stack/optional.py on every start; edit it, not this file.
s3proxy.endpoint=http://127.0.0.1:{S3_PORT}
s3proxy.authorization=aws-v2-or-v4
s3proxy.identity={S3_USER}
s3proxy.credential={s3_secret()}
jclouds.provider=filesystem
jclouds.filesystem.basedir={S3_DIR / "data"}
"""
    )
    # Without a configuration of its own, logback logs every request at DEBUG.
    (S3_DIR / "logback.xml").write_text(
        """\
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%d %level %logger{20} %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
  <logger name="org.gaul.shaded.org.eclipse.jetty" level="WARN"/>
</configuration>
"""
    )
    (S3_DIR / "client.env").write_text(
        f"""\
# Settings that store originals in the stack's S3 server; written by stack/optional.py.
AWS_STORAGE_BUCKET_NAME={S3_BUCKET}
AWS_S3_ENDPOINT_URL=http://127.0.0.1:{S3_PORT}
AWS_S3_REGION_NAME={S3_REGION}
AWS_ACCESS_KEY_ID={S3_USER}
AWS_SECRET_ACCESS_KEY={s3_secret()}
"""
    )


def s3_argv() -> list[str]:
    return [
        "java",
        "-Xmx256m",
        f"-Dlogback.configurationFile={S3_DIR / 'logback.xml'}",
        "-cp",
        f"{S3PROXY_LIBS}/*",
        "org.gaul.s3proxy.Main",
        "--properties",
        str(S3_DIR / "s3proxy.conf"),
    ]


S3_SERVICE = Service(
    "s3proxy",
    s3_argv,
    S3_PORT,
    f"TCP {S3_PORT} open",
    lambda: tcp_open(S3_PORT),
    ready_timeout=60,
    prepare=s3_prepare,
)


# Zipkin (traces) --------------------------------------------------------------------
# Chosen over Jaeger because it comes as one jar from Maven Central, UI included, and runs
# with the java that Kafka already needs; Jaeger's Go module has no UI without an npm build
# of a repository the registries do not serve.

# What the app processes need to send it their spans: standard OpenTelemetry variables.
ZIPKIN_CLIENT_ENV = {
    "OTEL_TRACES_EXPORTER": "zipkin",
    "OTEL_EXPORTER_ZIPKIN_ENDPOINT": f"http://127.0.0.1:{ZIPKIN_PORT}/api/v2/spans",
}


def zipkin_argv() -> list[str]:
    [jar] = ZIPKIN_LIBS.glob("zipkin-server-*-exec.jar")
    # Spans are kept in memory (the newest 500,000), on loopback only: a look at recent
    # jobs, not a store.
    return [
        "java",
        "-Xmx512m",
        "-jar",
        str(jar),
        "--armeria.ports[0].ip=127.0.0.1",
        f"--armeria.ports[0].port={ZIPKIN_PORT}",
    ]


def zipkin_ready() -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ZIPKIN_PORT}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


ZIPKIN_SERVICE = Service(
    "zipkin",
    zipkin_argv,
    ZIPKIN_PORT,
    f"GET :{ZIPKIN_PORT}/health answers 200",
    zipkin_ready,
    ready_timeout=120,
    prepare=install.install_zipkin_jar,
)


OPTIONAL_SERVICES = [KAFKA_SECURE.service(), S3_SERVICE, ZIPKIN_SERVICE]
