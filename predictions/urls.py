from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import path
from django.views.generic import RedirectView

from predictions import views

urlpatterns = [
    path("", views.upload_page, name="upload"),
    path("my/jobs/", views.my_jobs_page, name="my-jobs"),
    path("jobs/<uuid:pk>/", views.job_page, name="job-page"),
    path("jobs/<uuid:pk>/retry/", views.job_retry, name="job-page-retry"),
    path("jobs/<uuid:pk>/cancel/", views.job_cancel, name="job-page-cancel"),
    path("jobs/<uuid:pk>/image/<int:size>/", views.job_image, name="job-image"),
    path("jobs/<uuid:pk>/original/", views.job_original, name="job-original"),
    path("batches/<uuid:pk>/", views.batch_page, name="batch-page"),
    path("batches/<uuid:pk>/cancel/", views.batch_cancel, name="batch-page-cancel"),
    path("ops/", views.operations_page, name="ops"),
    path("ops/data.json", views.operations_data, name="ops-data"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", views.sign_out, name="logout"),
    # Browsers ask for it whatever the page's <link rel="icon"> says.
    path(
        "favicon.ico",
        RedirectView.as_view(url=static("predictions/favicon.svg"), permanent=True),
        name="favicon",
    ),
]
