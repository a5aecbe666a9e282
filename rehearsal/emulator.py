"""One AWS emulator process per region: moto's server plus what the controller needs and moto lacks.

Regions share nothing, exactly as in AWS: each region is its own process on its own port. On top of
moto this adds, in one place: the device side of IoT Jobs (`iot-jobs-data`, jobs_data.py), IoT Jobs
behaving as AWS documents them (iot_jobs.py), the IoT gaps the controller relies on (iot_gaps.py),
the fault switch (outage, latency, throttling) that drills and tests flip per region through
`/_emulator/fault`, and the region's MQTT endpoint (rehearsal/mqtt/: mutual TLS against this
region's registry, shadows, jobs and presence over MQTT), whose address and root CA
`/_emulator/mqtt` tells.

Run: python -m rehearsal.emulator --region us-east-1 --port 4566 [--mqtt-port 8883] [--pki-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from moto.backends import get_backend
from moto.core.base_backend import BackendDict
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple
from werkzeug.wrappers import Request, Response

from rehearsal import pki
from rehearsal.faults import Fault, FaultSwitch
from rehearsal.mqtt.broker import RegionBroker

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]
_XML_SERVICES = {"route53", "sts", "iam", "cloudwatch"}


def signing_service(environ: dict) -> str:
    """The service a request is signed for: the credential scope of its SigV4 Authorization header."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    try:
        return auth.split(",")[0].split()[1].split("/")[3].lower()
    except (IndexError, ValueError):
        return ""


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json", headers=headers or {})


def _error(service: str, status: int, code: str, message: str) -> Response:
    if service in _XML_SERVICES:
        xml = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
            f"<Message>{message}</Message></Error><RequestId>emulator</RequestId></ErrorResponse>"
        )
        return Response(xml, status=status, mimetype="text/xml")
    return _json(status, {"__type": code, "message": message}, {"x-amzn-ErrorType": code})


class RegionEmulator:
    """WSGI app: control endpoints, the fault switch, then iot-jobs-data or moto."""

    def __init__(self, region: str):
        self.region = region
        self.faults = FaultSwitch()
        self.moto: WsgiApp = DomainDispatcherApplication(create_backend_app)
        self.started = time.time()
        self.extensions: dict[str, WsgiApp] = {}
        self.mqtt: RegionBroker | None = None
        self._load_extensions()

    def start_mqtt(self, port: int = 0, host: str = "127.0.0.1", root: pki.LocalCA | None = None) -> int:
        """Start the region's MQTT endpoint next to the HTTP APIs; returns its port."""
        from rehearsal.mqtt import hooks, presence

        hooks.install()
        presence.install()
        self.mqtt = RegionBroker(self.region, self.faults, port=port, host=host, root=root)
        try:
            return self.mqtt.start()
        except RuntimeError:
            if not port:
                raise
            logging.getLogger("emulator").warning("MQTT port %s is busy: taking any free port", port)
            self.mqtt = RegionBroker(self.region, self.faults, port=0, host=host, root=root)
            return self.mqtt.start()

    def _load_extensions(self) -> None:
        """Plug in the device-side Jobs API and moto's missing IoT features (when present)."""
        try:
            from rehearsal import iot_jobs, jobs_data

            iot_jobs.install(self)
            jobs_data.install(self)
        except ImportError:
            pass
        try:
            from rehearsal import iot_data_gaps, iot_gaps

            iot_gaps.install(self)
            iot_data_gaps.install(self)
        except ImportError:
            pass

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_emulator/"):
            return self._control(Request(environ))(environ, start_response)
        service = signing_service(environ)
        if self.faults.hits("outage"):
            resp = _error(
                service, 503, "ServiceUnavailableException", f"region {self.region} is down (fault switch)"
            )
            return resp(environ, start_response)
        fault = self.faults.get()
        if fault.mode == "latency":
            time.sleep(fault.latency_ms / 1000)
        if self.faults.hits("throttle"):
            code = "Throttling" if service in _XML_SERVICES else "ThrottlingException"
            status = 400 if service in _XML_SERVICES | {"dynamodb"} else 429
            if service == "dynamodb":
                code = "com.amazonaws.dynamodb.v20120810#ThrottlingException"
            return _error(service, status, code, "Rate exceeded (fault switch)")(environ, start_response)
        app = self.extensions.get(service, self.moto)
        return app(environ, start_response)

    def _control(self, request: Request) -> Response:
        route = request.path.removeprefix("/_emulator/")
        if route == "health":
            return _json(
                200,
                {
                    "region": self.region,
                    "fault": vars(self.faults.get()),
                    "uptime": time.time() - self.started,
                    "mqtt_port": self.mqtt.port if self.mqtt else None,
                },
            )
        if route == "mqtt":
            if self.mqtt is None:
                return _json(404, {"error": f"{self.region} runs no MQTT endpoint"})
            return _json(200, self.mqtt.info())
        if route == "fault" and request.method == "POST":
            body = request.get_json(silent=True) or {}
            try:
                self.faults.set(Fault(**body))
            except (TypeError, ValueError) as e:
                return _json(400, {"error": str(e)})
            logging.getLogger("emulator").warning("fault switch in %s: %s", self.region, body)
            if self.mqtt is not None:
                self.mqtt.on_fault(self.faults.get())
            return _json(200, {"region": self.region, "fault": vars(self.faults.get())})
        if route == "reset" and request.method == "POST":
            reset_backends()
            for ext in self.extensions.values():
                getattr(ext, "reset", lambda: None)()
            if self.mqtt is not None:
                self.mqtt.reset()
            return _json(200, {"reset": True})
        for ext in {id(e): e for e in self.extensions.values()}.values():  # e.g. iot_jobs' clock
            handled = getattr(ext, "control", lambda *_: None)(route, request)
            if handled is not None:
                return handled
        return _json(404, {"error": f"no control endpoint {request.method} {request.path}"})


def reset_backends() -> None:
    for name in ("iot", "iot-data", "dynamodb", "sqs", "route53", "sts", "iam"):
        backend: BackendDict = get_backend(name)  # type: ignore[assignment]
        backend.reset()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="AWS emulator for one region of the local stack")
    parser.add_argument("--region", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mqtt-port", type=int, default=0, help="MQTT over TLS (0: any free port)")
    parser.add_argument("--no-mqtt", action="store_true", help="serve the HTTP APIs only")
    parser.add_argument(
        "--pki-dir",
        help="folder of the local root CA that signs the MQTT server certificate (made if missing)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s emulator[{args.region}] %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    logging.getLogger("amqtt").setLevel(logging.ERROR)
    logging.getLogger("transitions").setLevel(logging.ERROR)
    app = RegionEmulator(args.region)
    if not args.no_mqtt:
        root = pki.load_or_create_ca(Path(args.pki_dir)) if args.pki_dir else None
        app.start_mqtt(args.mqtt_port, args.host, root)
    run_simple(args.host, args.port, app, threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()
