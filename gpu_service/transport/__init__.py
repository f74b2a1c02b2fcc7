"""What reaches the service from outside: the Pub/Sub push envelope, its OIDC token, and the model
fetched from Cloud Storage."""
