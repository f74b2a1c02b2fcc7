"""``path("results/", include("dicom_results.urls"))`` in the host project.

The webhook is ``<prefix>webhook/``; the viewer is the rest: the list, the worklist of results
to review, the quality page, a result's reading view and its review form's POST.
``accounts/login/`` and ``accounts/logout/`` are provided for hosts without a login page of
their own (set ``LOGIN_URL = "dicom_results:login"``).
"""

from django.contrib.auth import views as auth_views
from django.urls import path

from dicom_results import quality_views, review_views, review_webhook, viewer, webhook

app_name = "dicom_results"

urlpatterns = [
    path("webhook/", webhook.receive_result, name="webhook"),
    path("", viewer.result_list, name="list"),
    path("worklist/", review_views.worklist, name="worklist"),
    path("quality/", quality_views.quality_page, name="quality"),
    path("<int:pk>/", viewer.result_detail, name="detail"),
    path("<int:pk>/review/", review_views.review, name="review"),
    path("<int:pk>/artifact/<str:role>", viewer.artifact, name="artifact"),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(template_name="dicom_results/login.html"),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="dicom_results:login"), name="logout"),
    path("webhook/review/", review_webhook.receive_review_receipt, name="review_webhook"),
]
