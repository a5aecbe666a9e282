"""Each rehearsal region's MQTT endpoint: amqtt over mutual TLS, backed by that region's moto registry."""
