"""Access fit for patient data: throttled logins (django-axes), sessions that end, and an example
production settings module that ``check --deploy`` finds nothing in."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from unittest import mock

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.test import SimpleTestCase, TestCase, override_settings
from django.urls import reverse
from django.utils import timezone

from dicom_results.checks import access_check

APP = Path(__file__).resolve().parent.parent


class LoginThrottlingTests(TestCase):
    def setUp(self) -> None:
        get_user_model().objects.create_user("doctor", password="pw-doctor", is_staff=True)
        self.url = reverse("dicom_results:login")

    def login(self, password: str, address: str = "10.0.0.1"):
        return self.client.post(self.url, {"username": "doctor", "password": password}, REMOTE_ADDR=address)

    def logged_in(self) -> bool:
        return "_auth_user_id" in self.client.session

    def test_wrong_passwords_lock_the_user_out_even_with_the_right_one(self) -> None:
        limit = settings.AXES_FAILURE_LIMIT
        for attempt in range(1, limit):
            with self.subTest(attempt=attempt):
                answer = self.login("wrong")
                self.assertEqual(answer.status_code, 200)  # the form again, with its error
                self.assertContains(answer, "Wrong user name or password")
        locked = self.login("wrong")  # the limit-th failure locks
        self.assertEqual(locked.status_code, 429)  # django-axes' AXES_HTTP_RESPONSE_CODE
        self.assertContains(locked, "too many", status_code=429)
        refused = self.login("pw-doctor")
        self.assertEqual(refused.status_code, 429)
        self.assertFalse(self.logged_in())
        self.assertEqual(self.client.get(reverse("dicom_results:list")).status_code, 302)

    def test_the_lock_is_per_user_and_address(self) -> None:
        for _ in range(settings.AXES_FAILURE_LIMIT):
            self.login("wrong")
        # A colleague's workstation behind the same ward address is another pair: not locked.
        self.assertEqual(self.login("pw-doctor", address="10.0.0.2").status_code, 302)
        self.assertTrue(self.logged_in())

    def test_a_success_before_the_limit_resets_the_count(self) -> None:
        for _ in range(settings.AXES_FAILURE_LIMIT - 1):
            self.login("wrong")
        self.assertEqual(self.login("pw-doctor").status_code, 302)
        self.client.logout()
        for _ in range(settings.AXES_FAILURE_LIMIT - 1):
            self.assertEqual(self.login("wrong").status_code, 200)


class SessionExpiryTests(TestCase):
    def setUp(self) -> None:
        get_user_model().objects.create_user("doctor", password="pw-doctor", is_staff=True)

    def log_in(self):
        answer = self.client.post(
            reverse("dicom_results:login"), {"username": "doctor", "password": "pw-doctor"}
        )
        self.assertEqual(answer.status_code, 302)
        return answer

    def test_the_session_cookie_ends_with_the_browser_and_the_server_side_after_an_idle_hour(self) -> None:
        cookie = self.log_in().cookies[settings.SESSION_COOKIE_NAME]
        self.assertEqual((cookie["expires"], cookie["max-age"]), ("", ""))  # a browser-session cookie
        self.assertTrue(cookie["httponly"])
        self.assertEqual(settings.SESSION_COOKIE_AGE, 3600)
        session = Session.objects.get()
        self.assertAlmostEqual(
            (session.expire_date - timezone.now()).total_seconds(), settings.SESSION_COOKIE_AGE, delta=60
        )

    def test_each_request_renews_the_idle_hour(self) -> None:
        self.log_in()
        Session.objects.update(expire_date=timezone.now() + timedelta(minutes=5))
        self.assertEqual(self.client.get(reverse("dicom_results:list")).status_code, 200)
        left = (Session.objects.get().expire_date - timezone.now()).total_seconds()
        self.assertGreater(left, settings.SESSION_COOKIE_AGE - 60)

    def test_an_expired_session_is_sent_back_to_login(self) -> None:
        self.log_in()
        self.assertEqual(self.client.get(reverse("dicom_results:list")).status_code, 200)
        Session.objects.update(expire_date=timezone.now() - timedelta(seconds=1))
        answer = self.client.get(reverse("dicom_results:list"))
        self.assertEqual(answer.status_code, 302)
        self.assertTrue(answer["Location"].startswith(reverse("dicom_results:login")))


class DeployCheckTests(SimpleTestCase):
    def test_the_example_production_settings_pass_check_deploy(self) -> None:
        env = {
            **os.environ,
            "DJANGO_SECRET_KEY": "x7#kQ2!vR9@pL4$wZ8^nB3&mT6*yH1(cF5)dJ0_gS2+eA7=uN4-oW9~iX3",
            "DJANGO_ALLOWED_HOSTS": "results.hospital.example",
            "DATABASE_URL": "postgres://results:secret@db.hospital.example:5432/results",
            "WEBHOOK_SECRET": settings.DICOM_RESULTS_WEBHOOK_SECRET,
            "UPLOAD_BUCKET": "hospital-uploads",
            "GOOGLE_CLOUD_PROJECT": "hospital-project",
        }
        env.pop("DJANGO_SETTINGS_MODULE", None)
        done = subprocess.run(
            [sys.executable, "-m", "django", "check", "--deploy", "--fail-level", "WARNING",
             "--settings", "example_project.settings"],
            cwd=APP, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        output = done.stdout + done.stderr
        self.assertEqual(done.returncode, 0, output)
        self.assertIn("System check identified no issues (0 silenced).", output)

    def test_a_host_without_axes_still_works(self) -> None:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings_without_axes"}
        done = subprocess.run(
            [sys.executable, "runtests.py", "tests.test_viewer", "tests.test_audit"],
            cwd=APP, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        output = done.stdout + done.stderr
        self.assertEqual(done.returncode, 0, output[-4000:])
        self.assertIn("\nOK", output)
        self.assertNotIn("Applying axes", output)

    def test_a_host_without_axes_or_with_long_sessions_is_warned(self) -> None:
        self.assertEqual(access_check(None), [])
        with (
            mock.patch("dicom_results.checks.apps.is_installed", return_value=False),
            override_settings(SESSION_COOKIE_AGE=14 * 24 * 3600),
        ):
            found = access_check(None)
        self.assertEqual([m.id for m in found], ["dicom_results.W001", "dicom_results.W002"])
