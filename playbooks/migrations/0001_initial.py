"""Diff and the playbook models, moved here from the sandboxes app: their tables exist
(sandboxes/migrations/0003 to 0007, named sandboxes_*), so this changes Django's state only."""

import django.db.models.deletion
import uuid
from django.conf import settings
from django.db import migrations, models


MOVED = ['diff', 'playbook', 'playbookversion', 'playbookfile', 'inventory', 'inventoryhost', 'playbookrun', 'playbookevent']


def move_content_types(apps, schema_editor):
    """Existing installations: the moved models keep their content types, so permissions
    granted on them (and admin log entries) carry over under the new app's name."""
    ContentType = apps.get_model("contenttypes", "ContentType")
    for model in MOVED:
        if not ContentType.objects.filter(app_label="playbooks", model=model).exists():
            ContentType.objects.filter(app_label="sandboxes", model=model).update(app_label="playbooks")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('contenttypes', '0002_remove_content_type_name'),
        ('approvals', '0002_origin'),
        ('sandboxes', '0008_models_moved_out'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='Inventory',
                    fields=[
                        ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ('name', models.CharField(max_length=100, unique=True)),
                        ('description', models.TextField(blank=True)),
                        ('variables', models.JSONField(blank=True, default=dict)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'verbose_name_plural': 'inventories',
                        'db_table': 'sandboxes_inventory',
                        'permissions': [('run_inventory', 'Can run playbooks (dry runs and applies) against inventories')],
                    },
                ),
                migrations.CreateModel(
                    name='Playbook',
                    fields=[
                        ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ('from_name', models.CharField(max_length=64)),
                        ('to_name', models.CharField(max_length=64)),
                        ('status', models.CharField(default='pending', max_length=10)),
                        ('error', models.TextField(blank=True)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('from_snapshot', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='sandboxes.snapshot')),
                        ('sandbox', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='playbooks', to='sandboxes.sandbox')),
                        ('to_snapshot', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='sandboxes.snapshot')),
                    ],
                    options={
                        'db_table': 'sandboxes_playbook',
                    },
                ),
                migrations.CreateModel(
                    name='PlaybookRun',
                    fields=[
                        ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ('kind', models.CharField(max_length=10)),
                        ('status', models.CharField(db_index=True, default='pending', max_length=12)),
                        ('queue', models.CharField(max_length=80)),
                        ('cancel_requested', models.BooleanField(default=False)),
                        ('host_stats', models.JSONField(blank=True, default=dict)),
                        ('failed_tasks', models.JSONField(blank=True, default=list)),
                        ('error', models.TextField(blank=True)),
                        ('events_count', models.PositiveIntegerField(default=0)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('started_at', models.DateTimeField(blank=True, null=True)),
                        ('finished_at', models.DateTimeField(blank=True, null=True)),
                        ('approval', models.OneToOneField(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='playbook_run', to='approvals.approvalrequest')),
                        ('inventory', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='runs', to='playbooks.inventory')),
                        ('requested_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'db_table': 'sandboxes_playbookrun',
                        'ordering': ['-created_at'],
                    },
                ),
                migrations.CreateModel(
                    name='PlaybookEvent',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('seq', models.PositiveIntegerField()),
                        ('event', models.CharField(max_length=50)),
                        ('host', models.CharField(blank=True, max_length=255)),
                        ('task', models.CharField(blank=True, max_length=500)),
                        ('data', models.JSONField(blank=True, default=dict)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('run', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='events', to='playbooks.playbookrun')),
                    ],
                    options={
                        'db_table': 'sandboxes_playbookevent',
                        'ordering': ['run', 'seq'],
                    },
                ),
                migrations.CreateModel(
                    name='PlaybookVersion',
                    fields=[
                        ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ('number', models.PositiveIntegerField()),
                        ('yaml', models.TextField()),
                        ('sha256', models.CharField(max_length=64)),
                        ('generated', models.BooleanField(default=False)),
                        ('warnings', models.JSONField(blank=True, default=list)),
                        ('skipped', models.JSONField(blank=True, default=list)),
                        ('syntax_ok', models.BooleanField(null=True)),
                        ('syntax_output', models.TextField(blank=True)),
                        ('note', models.TextField(blank=True)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('playbook', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='versions', to='playbooks.playbook')),
                    ],
                    options={
                        'db_table': 'sandboxes_playbookversion',
                        'ordering': ['playbook', 'number'],
                    },
                ),
                migrations.AddField(
                    model_name='playbookrun',
                    name='version',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='runs', to='playbooks.playbookversion'),
                ),
                migrations.CreateModel(
                    name='PlaybookFile',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.CharField(max_length=255)),
                        ('content', models.BinaryField()),
                        ('sha256', models.CharField(max_length=64)),
                        ('size', models.PositiveBigIntegerField()),
                        ('version', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='files', to='playbooks.playbookversion')),
                    ],
                    options={
                        'db_table': 'sandboxes_playbookfile',
                    },
                ),
                migrations.CreateModel(
                    name='Diff',
                    fields=[
                        ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ('from_name', models.CharField(max_length=64)),
                        ('to_name', models.CharField(max_length=64)),
                        ('status', models.CharField(default='pending', max_length=10)),
                        ('result', models.TextField(blank=True)),
                        ('error', models.TextField(blank=True)),
                        ('duration_ms', models.PositiveIntegerField(blank=True, null=True)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('from_snapshot', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='sandboxes.snapshot')),
                        ('sandbox', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='diffs', to='sandboxes.sandbox')),
                        ('to_snapshot', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='sandboxes.snapshot')),
                    ],
                    options={
                        'db_table': 'sandboxes_diff',
                        'ordering': ['-created_at'],
                        'indexes': [models.Index(fields=['sandbox', 'from_name', 'to_name'], name='sandboxes_d_sandbox_ae9f98_idx')],
                    },
                ),
                migrations.CreateModel(
                    name='InventoryHost',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.CharField(max_length=100)),
                        ('address', models.CharField(blank=True, max_length=255)),
                        ('port', models.PositiveIntegerField(default=22)),
                        ('user', models.CharField(default='root', max_length=64)),
                        ('groups', models.JSONField(blank=True, default=list)),
                        ('variables', models.JSONField(blank=True, default=dict)),
                        ('host_key', models.TextField(blank=True, help_text="Pinned: 'ssh-ed25519 AAAA...'.")),
                        ('private_key_encrypted', models.TextField(blank=True)),
                        ('certificate', models.TextField(blank=True)),
                        ('inventory', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='hosts', to='playbooks.inventory')),
                        ('sandbox', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='sandboxes.sandbox')),
                    ],
                    options={
                        'db_table': 'sandboxes_inventoryhost',
                        'constraints': [models.UniqueConstraint(fields=('inventory', 'name'), name='unique_inventory_host')],
                    },
                ),
                migrations.AddConstraint(
                    model_name='playbook',
                    constraint=models.UniqueConstraint(fields=('sandbox', 'from_snapshot', 'to_snapshot'), name='one_playbook_per_snapshot_pair'),
                ),
                migrations.AddConstraint(
                    model_name='playbookevent',
                    constraint=models.UniqueConstraint(fields=('run', 'seq'), name='unique_playbook_event_seq'),
                ),
                migrations.AddConstraint(
                    model_name='playbookversion',
                    constraint=models.UniqueConstraint(fields=('playbook', 'number'), name='unique_playbook_version'),
                ),
                migrations.AddConstraint(
                    model_name='playbookfile',
                    constraint=models.UniqueConstraint(fields=('version', 'name'), name='unique_playbook_file'),
                ),
            ],
        ),
        migrations.RunPython(move_content_types, migrations.RunPython.noop),
    ]
