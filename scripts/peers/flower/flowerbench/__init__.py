"""FedAvg for `make bench-peers`: a Flower App (ServerApp + ClientApp, Message API of flwr 1.41)."""
