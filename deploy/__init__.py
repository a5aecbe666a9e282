"""How the controller runs: AWS templates, containers, Kubernetes, Prometheus and Grafana, and their checks."""
