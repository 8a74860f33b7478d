from django.urls import path
from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter(trailing_slash="/?")
router.register("sandboxes", views.SandboxViewSet, basename="sandbox")
router.register("operations", views.OperationViewSet, basename="operation")

urlpatterns = [
    path("health", views.HealthView.as_view(), name="health"),
    path("vms", views.VMListView.as_view(), name="vms"),
    *router.urls,
]
