"""ApiKey moved to the accounts app, Diff and the playbook models to the playbooks app.
Their tables stay as they are (they keep their sandboxes_ names): this changes Django's
state only."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('sandboxes', '0007_inventory_run_permission'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(
                    model_name='diff',
                    name='from_snapshot',
                ),
                migrations.RemoveField(
                    model_name='diff',
                    name='sandbox',
                ),
                migrations.RemoveField(
                    model_name='diff',
                    name='to_snapshot',
                ),
                migrations.RemoveField(
                    model_name='inventory',
                    name='created_by',
                ),
                migrations.RemoveField(
                    model_name='inventoryhost',
                    name='inventory',
                ),
                migrations.RemoveField(
                    model_name='playbookrun',
                    name='inventory',
                ),
                migrations.RemoveField(
                    model_name='inventoryhost',
                    name='sandbox',
                ),
                migrations.RemoveField(
                    model_name='playbook',
                    name='created_by',
                ),
                migrations.RemoveField(
                    model_name='playbook',
                    name='from_snapshot',
                ),
                migrations.RemoveField(
                    model_name='playbook',
                    name='sandbox',
                ),
                migrations.RemoveField(
                    model_name='playbook',
                    name='to_snapshot',
                ),
                migrations.RemoveField(
                    model_name='playbookversion',
                    name='playbook',
                ),
                migrations.RemoveField(
                    model_name='playbookevent',
                    name='run',
                ),
                migrations.RemoveField(
                    model_name='playbookfile',
                    name='version',
                ),
                migrations.RemoveField(
                    model_name='playbookrun',
                    name='approval',
                ),
                migrations.RemoveField(
                    model_name='playbookrun',
                    name='requested_by',
                ),
                migrations.RemoveField(
                    model_name='playbookrun',
                    name='version',
                ),
                migrations.RemoveField(
                    model_name='playbookversion',
                    name='created_by',
                ),
                migrations.DeleteModel(
                    name='ApiKey',
                ),
                migrations.DeleteModel(
                    name='Diff',
                ),
                migrations.DeleteModel(
                    name='Inventory',
                ),
                migrations.DeleteModel(
                    name='InventoryHost',
                ),
                migrations.DeleteModel(
                    name='Playbook',
                ),
                migrations.DeleteModel(
                    name='PlaybookEvent',
                ),
                migrations.DeleteModel(
                    name='PlaybookFile',
                ),
                migrations.DeleteModel(
                    name='PlaybookRun',
                ),
                migrations.DeleteModel(
                    name='PlaybookVersion',
                ),
            ],
        ),
    ]
