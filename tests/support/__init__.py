"""What several test suites share: the repository root, the service's test doubles' real servers
(:mod:`tests.support.service`), the Terraform parser (:mod:`tests.support.terraform`)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
