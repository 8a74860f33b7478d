from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter()
router.trailing_slash = "/?"
# /v1/sandboxes/{id}/egress, /egress/requests, /egress/log
router.register("sandboxes", views.SandboxEgressViewSet, basename="sandbox-egress")

urlpatterns = router.urls
