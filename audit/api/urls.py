from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter()
router.trailing_slash = "/?"
router.register("audit", views.AuditEventViewSet, basename="audit")

urlpatterns = router.urls
