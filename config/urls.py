from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from approvals.api.urls import human_urlpatterns

urlpatterns = [
    path("admin/", admin.site.urls),
    path("v1/", include("sandboxes.api.urls")),
    path("v1/", include("playbooks.api.urls")),
    path("v1/", include("egress.api.urls")),
    path("v1/", include("audit.api.urls")),
    path("", include("terminals.api.urls")),
    path("v1/", include("approvals.api.urls")),
    path("api/v1/", include(human_urlpatterns)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
]
