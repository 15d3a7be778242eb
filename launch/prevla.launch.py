"""Launch the prevla graph: sim_node (LIBERO), policy_node and verifier_node (and, with
``use_world_model:=true``, world_model_node; with ``use_controller:=true``,
controller_adapter_node; with ``rviz:=true``, rviz2 with prevla's config).

For a machine with a full ROS 2 install (``launch`` and ``launch_ros`` come with it), after
``colcon build --packages-select prevla_interfaces prevla_ros`` and sourcing the workspace::

    ros2 launch prevla_ros prevla.launch.py suite:=libero_object
    ros2 launch prevla_ros prevla.launch.py suite:=libero_object task_id:=3 episodes:=10
    ros2 launch prevla_ros prevla.launch.py use_sim:=false   # a robot driver publishes the topics
    ros2 launch prevla_ros prevla.launch.py params_file:=/path/to/robot.params.yaml
    ros2 launch prevla_ros prevla.launch.py backend:=tensorrt device:=cuda
    ros2 launch prevla_ros prevla.launch.py use_world_model:=true rviz:=true
    ros2 launch prevla_ros prevla.launch.py use_sim:=false use_controller:=true
    ros2 launch prevla_ros prevla.launch.py --show-args

policy_node, verifier_node and world_model_node are managed (lifecycle) nodes: each is
configured when its process starts (again after every respawn) and activated once configured
(the standard ``EmitEvent(ChangeState)`` + ``OnStateTransition`` pattern: ``drive_to_active``).
A configure that fails (a model that cannot be loaded) leaves that node unconfigured, saying
why in its log and on /diagnostics; fix it, then ``ros2 lifecycle set /policy_node configure``
and ``... activate``. ``ros2 lifecycle set /verifier_node deactivate`` pauses a node (its model
stays loaded), ``activate`` resumes it. sim_node, the robot, is a plain node.

Every node is respawned when it dies (``respawn``/``respawn_delay``/``respawn_max_retries``: the
policy of ``prevla up --processes``, whose defaults these constants are; launch keeps the delay
fixed where prevla up doubles it per restart in a row) and stopped by launch's SIGINT, SIGTERM,
SIGKILL sequence on shutdown. Peers ride through a restart (holds, re-published observations).

Every node parameter lives in ``params_file`` (default: the installed ``prevla.params.yaml``).
The launch arguments below override their parameter in that file and default to the node's
own default, so set those parameters with the argument, everything else in the file.
A pip-only install (no ``ros2 launch``) runs the same graph with ``prevla up``.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessStart
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue
from lifecycle_msgs.msg import Transition

PACKAGE = 'prevla_ros'
# The respawn policy of every node (SupervisorConfig's defaults: respawn, respawn_delay_s,
# max_restarts; tests/unit/test_launch_consistency.py checks they agree).
RESPAWN = True
RESPAWN_DELAY = 1.0
RESPAWN_MAX_RETRIES = 5


def drive_to_active(node):
    """The standard lifecycle handlers of one managed node: configure it when its process
    starts (each respawn starts it again, so a respawned node comes back active too) and
    activate it once a configure has brought it to inactive."""
    def change(transition_id):
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                           transition_id=transition_id))

    return [
        RegisterEventHandler(OnProcessStart(
            target_action=node, on_start=[change(Transition.TRANSITION_CONFIGURE)])),
        RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, start_state='configuring', goal_state='inactive',
            entities=[change(Transition.TRANSITION_ACTIVATE)])),
    ]


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    default_params = os.path.join(share, 'launch', 'prevla.params.yaml')
    arguments = [
        DeclareLaunchArgument(
            'params_file', default_value=default_params,
            description='ROS 2 parameters file for sim_node, policy_node, verifier_node and '
                        'world_model_node'),
        DeclareLaunchArgument(
            'use_sim', default_value='true', choices=['true', 'false'],
            description='start the LIBERO sim_node; false when a real robot driver publishes '
                        'the observation topics and executes the approved chunks'),
        DeclareLaunchArgument(
            'use_world_model', default_value='false', choices=['true', 'false'],
            description='start world_model_node: imagines the frames of the chunks named by '
                        "its source parameter (params_file) with the zoo's world model, for rviz"),
        DeclareLaunchArgument(
            'suite', default_value='libero_spatial',
            description='LIBERO suite: libero_spatial, libero_object, libero_goal, libero_10, '
                        'libero_90 (sim_node)'),
        DeclareLaunchArgument(
            'task_id', default_value='0',
            description='task index within the suite (sim_node)'),
        DeclareLaunchArgument(
            'init_state', default_value='0',
            description="index of LIBERO's official init state for the first episode "
                        '(sim_node)'),
        DeclareLaunchArgument(
            'episodes', default_value='1',
            description='episodes to run; 0 runs forever (sim_node)'),
        DeclareLaunchArgument(
            'policy', default_value='vla',
            description='policy that samples candidate chunks: vla | scripted_expert | remote '
                        '(policy_node)'),
        DeclareLaunchArgument(
            'checkpoint', default_value='',
            description="VLA checkpoint file or zoo:NAME; empty = the zoo's default VLA "
                        "(policy_node; the verifier's checkpoint is set in params_file)"),
        DeclareLaunchArgument(
            'backend', default_value='auto',
            choices=['auto', 'tensorrt', 'onnxruntime', 'torch'],
            description='runtime backend of the VLA and the verifier; the fallback chain '
                        'tensorrt -> onnxruntime -> torch starts at the one named (auto = at '
                        'the top) (policy_node, verifier_node)'),
        DeclareLaunchArgument(
            'device', default_value='auto',
            description='device of the VLA and the verifier: auto | cpu | cuda | cuda:N '
                        '(policy_node, verifier_node)'),
        DeclareLaunchArgument(
            'num_candidates', default_value='4',
            description='K, candidate chunks sampled per observation (policy_node)'),
        DeclareLaunchArgument(
            'verifier', default_value='model',
            description='verifier that scores candidates: model (the learned Pre-VLA verifier '
                        "of the params file's verifier_node checkpoint, default the zoo's) | "
                        'passthrough (accepts the first valid one) (verifier_node)'),
        DeclareLaunchArgument(
            'threshold', default_value='0.0',
            description='accept threshold tau on P(safe) of the model verifier; 0.0 = the '
                        "checkpoint's calibrated threshold, else in (0, 1) (verifier_node)"),
        DeclareLaunchArgument(
            'mode', default_value='execute', choices=['execute', 'imagine'],
            description='execute: gate chunks before the robot moves; imagine: before the '
                        'world model rolls them out (verifier_node)'),
        DeclareLaunchArgument(
            'use_controller', default_value='false', choices=['true', 'false'],
            description='start controller_adapter_node: executes the approved action chunks '
                        "on a robot's controller (its parameters come from params_file)"),
        DeclareLaunchArgument(
            'rviz', default_value='false', choices=['true', 'false'],
            description="start rviz2 with prevla's display config (launch/prevla.rviz): "
                        'camera, approved and imagined paths, imagined frames'),
    ]
    params_file = LaunchConfiguration('params_file')

    # Launch-argument overrides come after the file, so they win. They are typed explicitly:
    # launch would otherwise guess each type from the text, and a ROS parameter only takes
    # values of its declared default's type.
    sim_node = Node(
        package=PACKAGE, executable='sim_node', name='sim_node', output='screen',
        respawn=RESPAWN, respawn_delay=RESPAWN_DELAY, respawn_max_retries=RESPAWN_MAX_RETRIES,
        condition=IfCondition(LaunchConfiguration('use_sim')),
        parameters=[params_file, {
            'suite': ParameterValue(LaunchConfiguration('suite'), value_type=str),
            'task_id': ParameterValue(LaunchConfiguration('task_id'), value_type=int),
            'init_state': ParameterValue(LaunchConfiguration('init_state'), value_type=int),
            'episodes': ParameterValue(LaunchConfiguration('episodes'), value_type=int),
        }])
    policy_node = LifecycleNode(
        package=PACKAGE, executable='policy_node', name='policy_node', namespace='',
        output='screen',
        respawn=RESPAWN, respawn_delay=RESPAWN_DELAY, respawn_max_retries=RESPAWN_MAX_RETRIES,
        parameters=[params_file, {
            'policy': ParameterValue(LaunchConfiguration('policy'), value_type=str),
            'checkpoint': ParameterValue(LaunchConfiguration('checkpoint'), value_type=str),
            'backend': ParameterValue(LaunchConfiguration('backend'), value_type=str),
            'device': ParameterValue(LaunchConfiguration('device'), value_type=str),
            'num_candidates': ParameterValue(LaunchConfiguration('num_candidates'),
                                             value_type=int),
        }])
    verifier_node = LifecycleNode(
        package=PACKAGE, executable='verifier_node', name='verifier_node', namespace='',
        output='screen',
        respawn=RESPAWN, respawn_delay=RESPAWN_DELAY, respawn_max_retries=RESPAWN_MAX_RETRIES,
        parameters=[params_file, {
            'verifier': ParameterValue(LaunchConfiguration('verifier'), value_type=str),
            'threshold': ParameterValue(LaunchConfiguration('threshold'), value_type=float),
            'mode': ParameterValue(LaunchConfiguration('mode'), value_type=str),
            'backend': ParameterValue(LaunchConfiguration('backend'), value_type=str),
            'device': ParameterValue(LaunchConfiguration('device'), value_type=str),
        }])

    world_model_node = LifecycleNode(
        package=PACKAGE, executable='world_model_node', name='world_model_node', namespace='',
        output='screen',
        respawn=RESPAWN, respawn_delay=RESPAWN_DELAY, respawn_max_retries=RESPAWN_MAX_RETRIES,
        condition=IfCondition(LaunchConfiguration('use_world_model')),
        parameters=[params_file])

    controller_adapter_node = Node(
        package=PACKAGE, executable='controller_adapter_node', name='controller_adapter_node',
        output='screen',
        respawn=RESPAWN, respawn_delay=RESPAWN_DELAY, respawn_max_retries=RESPAWN_MAX_RETRIES,
        condition=IfCondition(LaunchConfiguration('use_controller')),
        parameters=[params_file])
    rviz = Node(
        package='rviz2', executable='rviz2', name='rviz2', output='screen',
        arguments=['-d', os.path.join(share, 'launch', 'prevla.rviz')],
        condition=IfCondition(LaunchConfiguration('rviz')))

    managed = [policy_node, verifier_node, world_model_node]
    handlers = [handler for node in managed for handler in drive_to_active(node)]
    return LaunchDescription(arguments + handlers + [sim_node, *managed,
                                                     controller_adapter_node, rviz])
