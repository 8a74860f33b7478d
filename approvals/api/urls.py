from django.urls import path
from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter()
router.trailing_slash = "/?"
router.register("approvals", views.ApprovalViewSet, basename="approval")

# Mounted at /v1/.
urlpatterns = router.urls

# Mounted at /api/v1/: the original's human-in-the-loop routes.
human_urlpatterns = [
    path("human/ask", views.HumanAskView.as_view(), name="human-ask"),
    path("human/ask-async", views.HumanAskAsyncView.as_view(), name="human-ask-async"),
    path("human/pending", views.HumanPendingView.as_view(), name="human-pending"),
    path(
        "human/pending/<uuid:request_id>",
        views.HumanPendingDetailView.as_view(),
        name="human-pending-detail",
    ),
    path("human/respond", views.HumanRespondView.as_view(), name="human-respond"),
]
