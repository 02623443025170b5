from django.urls import path

from predictions import views

urlpatterns = [
    path("", views.upload_page, name="upload"),
    path("jobs/<uuid:pk>/", views.job_page, name="job-page"),
    path("batches/<uuid:pk>/", views.batch_page, name="batch-page"),
]
